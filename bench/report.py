"""Figures from timing samples, the results file, and the table `python -m bench` prints."""

import json
import os
import platform
import statistics
from pathlib import Path

GIGA = 1e9


def cpu_model(cpuinfo='/proc/cpuinfo'):
    """The CPU's model name as /proc/cpuinfo gives it, else what platform knows."""
    try:
        for line in Path(cpuinfo).read_text().splitlines():
            if line.startswith('model name'):
                return line.split(':', 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or 'unknown CPU'


def summarize(samples, flops=None, sgemm=None):
    """Median seconds of `samples`; with `flops`, the achieved GFLOP/s; with `sgemm` (the
    SGEMM limit's samples and FLOPs, taken in the same rounds), the share of that limit.

    The share is the median over rounds of each round's pair, which cancels load that
    changes between rounds: the limit is measured next to what is compared with it.
    """
    summary = {'samples_s': [round(s, 6) for s in samples],
               'median_s': round(statistics.median(samples), 6)}
    if flops:
        summary['gflop'] = round(flops / GIGA, 6)
        summary['gflops'] = round(flops / GIGA / summary['median_s'], 1)
        if sgemm:
            sgemm_samples, sgemm_flops = sgemm
            summary['of_sgemm'] = round(statistics.median(
                (flops / seconds) / (sgemm_flops / limit)
                for seconds, limit in zip(samples, sgemm_samples)), 3)
    return summary


def ratio(numerator_samples, denominator_samples):
    """The median over rounds of one subject's time over another's in the same round."""
    return round(statistics.median(a / b for a, b in zip(numerator_samples,
                                                           denominator_samples)), 3)


def write_json(path, results):
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + '.tmp')
    tmp.write_text(json.dumps(results, indent=2) + '\n')
    os.replace(tmp, path)


def _cell(figures, key, fmt):
    return fmt.format(figures[key]) if figures and key in figures else '-'


def table(results):
    """The results as a plain-text table (what `python -m bench` prints)."""
    lines = [f"{results['model']} at {results['width']}x{results['height']}, "
             f"{results['rounds']} alternating rounds; load average "
             f"{results['load']['start'][0]:.2f} -> {results['load']['end'][0]:.2f} "
             f"on {results['machine']['cores']} cores"
             + (f"; Caffe's BLAS: {results['machine']['caffe_blas']}"
                if 'caffe_blas' in results['machine'] else '')]
    if 'forward' in results or 'train' in results:
        lines.append(f"{'':24}{'Caffe':>12}{'PyTorch':>12}{'Caffe/PyTorch':>15}")
    for part, title in (('forward', 'forward'), ('train', 'forward+backward')):
        if part not in results:
            continue
        caffe, torch = results[part]['caffe'], results[part]['torch']
        lines += [
            f"{title + ' s':24}{_cell(caffe, 'median_s', '{:.3f}'):>12}"
            f"{_cell(torch, 'median_s', '{:.3f}'):>12}{results[part]['ratio']:>15.3f}",
            f"{'  GFLOP/s':24}{_cell(caffe, 'gflops', '{:.1f}'):>12}"
            f"{_cell(torch, 'gflops', '{:.1f}'):>12}",
            f"{'  of SGEMM limit':24}{_cell(caffe, 'of_sgemm', '{:.0%}'):>12}"
            f"{_cell(torch, 'of_sgemm', '{:.0%}'):>12}"
            f"{'  (limit ' + format(results[part]['sgemm']['gflops'], '.1f') + ')':>15}",
            f"{'  peak memory MB':24}{_cell(caffe, 'peak_mb', '{:.0f}'):>12}"
            f"{_cell(torch, 'peak_mb', '{:.0f}'):>12}"
            f"{caffe['peak_mb'] / torch['peak_mb']:>15.2f}",
        ]
        lines += form_lines(results[part], results.get('torch_forms_unavailable', {}))
    if 'sgemm' in results:
        lines.append(f"SGEMM limit: numpy float32 {results['sgemm']['size']}^2 matmul, "
                     f"GFLOP/s in the same rounds")
    data = results.get('data')
    if data and 'images_per_s' in data:
        share = (f", {data['of_train_iteration']:.2%} of a Caffe training iteration"
                 if 'of_train_iteration' in data else '')
        lines.append(f"data layer: {data['images_per_s']:.1f} images/s "
                     f"({data['median_s'] * 1000:.1f} ms per JPEG + PNG{share})")
    elif data:
        lines.append(f"data layer: not measured ({data['unavailable']})")
    for name, check in results['checks'].items():
        for kind in ('outputs', 'gradients'):
            values = [value for key, value in check.items()
                      if key.startswith('grad:') == (kind == 'gradients')]
            if values:
                lines.append(f"check {name}: {len(values)} {kind} agree within "
                             f"{max(values):.1e} (tolerance "
                             f"{results['tolerance'][kind]:.0e})")
    return '\n'.join(lines)


def form_lines(part, unavailable):
    """One line for each form PyTorch's pass was timed in (a part's 'torch_forms'): its
    median, Caffe's ratio to it, its share of the SGEMM limit and peak memory; the
    fastest, the baseline of the lines above, marked. Forms that could not be set up
    follow with the reason."""
    forms = part.get('torch_forms')
    if not forms:
        return []
    lines = ["  PyTorch by form (s, Caffe/form, of SGEMM limit, peak MB):"]
    for form, row in forms.items():
        mark = '  <- baseline' if form == part['torch'].get('form') else ''
        lines.append(f"{'    ' + form:24}{'':>12}{row['median_s']:>12.3f}{row['ratio']:>15.3f}"
                     f"{_cell(row, 'of_sgemm', '{:.0%}'):>7}{row['peak_mb']:>7.0f}{mark}")
    for form, reason in unavailable.items():
        lines.append(f"{'    ' + form:24}not timed: {reason}")
    return lines


def blas_table(blas):
    """Caffe's forward and training under each other BLAS, against PyTorch and against the
    default (a part not timed shows as -)."""
    lines = [f"{'BLAS under the same Caffe':28}{'forward s':>10}{'of SGEMM':>10}"
             f"{'/PyTorch':>10}{'/default':>10}{'training s':>12}{'of SGEMM':>10}"
             f"{'/PyTorch':>10}{'/default':>10}"]
    for name, parts in blas.items():
        cells = [f'{name[:28]:28}']
        for part, width in (('forward', 10), ('train', 12)):
            row = parts.get(part)
            if row is None:
                cells.append(f"{'-':>{width}}{'-':>10}{'-':>10}{'-':>10}")
            else:
                cells.append(f"{row['median_s']:>{width}.3f}{row['of_sgemm']:>10.0%}"
                             f"{row['ratio_to_torch']:>10.3f}{row['ratio_to_default']:>10.3f}")
        lines.append(''.join(cells))
    return '\n'.join(lines)


def train_layer_table(rows, sgemm_gflops, passes, top=12):
    """The slowest layers of Caffe's training net, forward and backward, with the
    backward's share of the SGEMM limit."""
    total = sum(row['forward_s'] + row['backward_s'] for row in rows)
    lines = [f"Caffe training by layer, mean of {passes} passes (SGEMM limit around it: "
             f"{sgemm_gflops:.1f} GFLOP/s)",
             f"{'layer':16}{'forward s':>10}{'backward s':>11}{'share':>8}"
             f"{'backward of SGEMM':>19}"]
    for row in sorted(rows, key=lambda row: -(row['forward_s'] + row['backward_s']))[:top]:
        seconds = row['forward_s'] + row['backward_s']
        of_sgemm = (f"{row['backward_flops'] / GIGA / row['backward_s'] / sgemm_gflops:.0%}"
                    if row['backward_flops'] and row['backward_s'] else '-')
        lines.append(f"{row['layer']:16}{row['forward_s']:>10.4f}{row['backward_s']:>11.4f}"
                     f"{seconds / total:>8.0%}{of_sgemm:>19}")
    return '\n'.join(lines)


def contention_table(contention):
    """Training alone and beside one busy process, with and without the thread settings."""
    figures = contention['figures']
    settings = ' '.join(f'{k}={v}' for k, v in contention['settings'].items()) or 'none'
    lines = [f"{contention['model']} at {contention['width']}x{contention['height']}, "
             f"{contention['iterations']} training iterations a run, alone and beside one "
             f"busy process",
             f"{'':28}{'alone s':>10}{'busy s':>10}{'busy/alone':>12}"]
    for label, title in (('defaults', "libraries' defaults"), ('project', settings)):
        row = figures[label]
        lines.append(f"{title[:28]:28}{row['alone_s']:>10.2f}{row['busy_s']:>10.2f}"
                     f"{row['slowdown']:>12.2f}")
    project = figures['project']
    lines.append(f"project settings against defaults: alone {project['alone_vs_reference']:.3f}, "
                 f"busy {project['busy_vs_reference']:.3f} (medians of each round's ratio)")
    runs = contention['iterations'] * len(project['alone_samples_s'])
    lines.append(f"iterations on fewer threads (project): alone {project['fewer_threads_alone']} "
                 f"of {runs}, busy {project['fewer_threads_busy']} of {runs}")
    return '\n'.join(lines)


def layer_table(rows, sgemm_gflops, top=12):
    """The slowest Caffe forward layers with their share of time and of the SGEMM limit."""
    total = sum(row['seconds'] for row in rows)
    lines = [f"Caffe forward by layer (SGEMM limit around it: {sgemm_gflops:.1f} GFLOP/s)",
             f"{'layer':16}{'s':>8}{'share':>8}{'GFLOP':>8}{'of SGEMM':>10}"]
    for row in sorted(rows, key=lambda row: -row['seconds'])[:top]:
        gflop = row['flops'] / GIGA
        of_sgemm = f"{gflop / row['seconds'] / sgemm_gflops:.0%}" if row['flops'] else '-'
        lines.append(f"{row['layer']:16}{row['seconds']:>8.3f}{row['seconds'] / total:>8.0%}"
                     f"{gflop:>8.1f}{of_sgemm:>10}")
    return '\n'.join(lines)
