// The results page: draws runs, reproduction, images and legend from window.PAGE (data.js,
// written by fcn/reports/page.py). The images view keeps its state in the address's hash
// (#group=SET:LABEL&runs=A,B&by=A&sort=mean_iu-asc&class=3&page=1), so a view can be linked.
(function () {
  'use strict';
  var PAGE = window.PAGE;
  var PAGE_SIZE = 20;
  var METRICS = [['pixel_acc', 'pixel acc'], ['mean_acc', 'mean acc'], ['mean_iu', 'mean IU'],
                 ['fwavacc', 'f.w. IU']];
  var SORTS = [['mean_iu-asc', 'mean IU, worst first'], ['mean_iu-desc', 'mean IU, best first'],
               ['pixel_acc-asc', 'pixel accuracy, worst first'],
               ['pixel_acc-desc', 'pixel accuracy, best first'], ['id-asc', 'image id']];

  window.addEventListener('error', function (event) {
    var list = document.getElementById('page-errors');
    if (list) { list.appendChild(el('li', {}, ['page error: ' + event.message])); }
  });

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (key) {
      if (key === 'text') { node.textContent = attrs[key]; } else { node.setAttribute(key, attrs[key]); }
    });
    (children || []).forEach(function (child) {
      node.appendChild(typeof child === 'string' ? document.createTextNode(child) : child);
    });
    return node;
  }

  function percent(value) {
    return value === null || value === undefined ? 'n/a' : (100 * value).toFixed(1);
  }

  function fileUrl(folder, label, multi, id, extension) {
    return folder + '/' + (multi ? encodeURIComponent(label) + '/' : '') +
      encodeURIComponent(id) + extension;
  }

  // Every image reports to the body's data attributes: how many loaded and how many broke.
  var imageCounts = {loaded: 0, broken: 0};
  function picture(src, alt, className) {
    var img = el('img', {src: src, alt: alt});
    if (className) { img.className = className; }
    img.addEventListener('load', function () {
      imageCounts.loaded += 1; document.body.dataset.imagesLoaded = imageCounts.loaded;
    });
    img.addEventListener('error', function () {
      imageCounts.broken += 1; img.classList.add('broken');
      document.body.dataset.imagesBroken = imageCounts.broken;
    });
    return img;
  }

  function absent(text) { return el('div', {'class': 'absent'}, [text]); }

  function table(headers, rows, className) {
    return el('table', className ? {'class': className} : {}, [
      el('thead', {}, [el('tr', {}, headers.map(function (h) {
        return el('th', typeof h === 'string' ? {} : {'class': h[1]}, [typeof h === 'string' ? h : h[0]]);
      }))]),
      el('tbody', {}, rows)]);
  }

  // ---- runs --------------------------------------------------------------------------------
  function renderRuns() {
    var rows = [];
    PAGE.runs.forEach(function (run) {
      var heads = run.heads.length ? run.heads : [null];
      heads.forEach(function (head) {
        rows.push(el('tr', {'data-run': run.key}, [
          el('td', {}, [runLink(run)]),
          el('td', {}, [head && run.heads.length > 1 ? head.label : '']),
          el('td', {}, [run.split || '']),
          el('td', {'class': 'num'}, [head && head.n_images !== null ? String(head.n_images) : ''])
        ].concat(METRICS.map(function (m) {
          return el('td', {'class': 'num'}, [head ? percent(head.metrics[m[0]]) : '']);
        })).concat([el('td', {'class': 'missing'},
                       [run.missing.length ? run.missing.length + ' missing (below)' : ''])])));
      });
    });
    document.getElementById('runs-table').appendChild(table(
      ['run', 'head', 'split', ['images', 'num']].concat(
        METRICS.map(function (m) { return [m[1] + ' (%)', 'num']; })).concat(['']), rows));
    var details = document.getElementById('run-details');
    PAGE.runs.forEach(function (run) { details.appendChild(runDetails(run)); });
  }

  function runLink(run) {
    return el('a', {href: '#run-' + run.key}, [run.name]);
  }

  function runDetails(run) {
    var body = el('div', {'class': 'run-body'});
    run.heads.forEach(function (head) {
      var metrics = table(['metric', ['%', 'num']], METRICS.map(function (m) {
        return el('tr', {}, [el('td', {}, [m[1]]), el('td', {'class': 'num'}, [percent(head.metrics[m[0]])])]);
      }));
      var perClass = el('div', {'class': 'per-class'}, [table(['class', ['IU (%)', 'num']],
        head.per_class_iu.map(function (pair) {
          return el('tr', {}, [el('td', {}, [pair[0]]), el('td', {'class': 'num'}, [percent(pair[1])])]);
        }))]);
      var title = run.heads.length > 1 ? [el('h4', {}, ['head ' + head.label])] : [];
      body.appendChild(el('div', {}, title.concat([metrics, perClass])));
      if (head.confusion) {
        body.appendChild(el('figure', {}, [picture(head.confusion, 'confusion matrix', 'confusion'),
          el('figcaption', {}, ['confusion (' + head.label + '), each row over its ground truth pixels'])]));
      }
    });
    run.curves.forEach(function (curve) {
      body.appendChild(el('figure', {}, [picture(curve, curve, 'curve')]));
    });
    var missing = run.missing.length ? [el('ul', {'class': 'missing'}, run.missing.map(function (m) {
      return el('li', {}, ['missing: ' + m]);
    }))] : [];
    var notes = run.notes.map(function (n) { return el('p', {'class': 'notes'}, [n]); });
    var summary = el('summary', {}, [run.name + (run.split ? ' · ' + run.split : '') +
      (run.heads.length ? ' · mean IU ' + percent(run.heads[0].metrics.mean_iu) : ' · not scored')]);
    var info = el('p', {'class': 'notes'}, ['folder ' + run.folder + (run.weights ? ' · weights ' + run.weights : '')]);
    // A run lacking something opens at once, so what it lacks is seen.
    var attrs = run.missing.length ? {'class': 'run', id: 'run-' + run.key, open: ''} : {'class': 'run', id: 'run-' + run.key};
    return el('details', attrs, [summary, info].concat(missing, notes, [body]));
  }

  // ---- reproduction --------------------------------------------------------------------------
  function renderReproduction() {
    var box = document.getElementById('reproduction-table');
    if (!PAGE.reproduction.length) {
      box.appendChild(el('p', {'class': 'notes'}, ['no released weights scored and no run of a model with a published score']));
      return;
    }
    function scored(s) { return s ? s[0].toFixed(1) + ' (' + s[1] + (s[2] ? ', ' + s[2] + ' images' : '') + ')' : '-'; }
    box.appendChild(table(['model', ['published', 'num'], 'published in', ['released weights, here', 'num'],
                           ['your run', 'num']],
      PAGE.reproduction.map(function (row) {
        var p = row.published;
        return el('tr', {}, [el('td', {}, [row.model]),
          el('td', {'class': 'num'}, [p ? p[0].toFixed(1) + ' (' + p[1] + ')' : '-']),
          el('td', {}, [p ? p[2] : '-']), el('td', {'class': 'num'}, [scored(row.released)]),
          el('td', {'class': 'num'}, [scored(row.own)])]);
      })));
  }

  // ---- legend ------------------------------------------------------------------------------
  function renderLegends() {
    var box = document.getElementById('legends');
    PAGE.legends.forEach(function (legend) {
      box.appendChild(el('div', {'class': 'legend'}, [el('h4', {}, [legend.dataset + ' · ' + legend.label]),
        el('table', {}, legend.classes.map(function (c) {
          return el('tr', {}, [el('td', {'class': 'num'}, [String(c[0])]),
            el('td', {}, [el('span', {'class': 'swatch', style: 'background:' + c[2]}), c[1]])]);
        }))]));
    });
    ['right', 'wrong', 'void'].forEach(function (name) {
      document.getElementById('swatch-' + name).style.background = PAGE.error_colours[name];
    });
  }

  // ---- images ------------------------------------------------------------------------------
  // A group: the runs of one split and head, which can be set side by side.
  var groups = {};
  PAGE.runs.forEach(function (run) {
    run.heads.forEach(function (head) {
      if (!head.images) { return; }
      var key = head.set + ':' + head.label;
      if (!groups[key]) {
        var set = PAGE.sets[head.set];
        groups[key] = {key: key, set: head.set, label: head.label, runs: [], classes: head.class_names,
                       title: set.dataset + ' ' + set.split + (head.images.multi ? ' · ' + head.label : '')};
      }
      var index = {};
      head.images.ids.forEach(function (id, i) { index[id] = i; });
      var noPrediction = {};
      head.images.no_prediction.forEach(function (id) { noPrediction[id] = true; });
      groups[key].runs.push({run: run, head: head, index: index, noPrediction: noPrediction});
    });
  });
  var groupKeys = Object.keys(groups);

  // The hash also serves the section links (#runs, ...): those leave the view as it was.
  var lastState = null;
  function readState() {
    if (lastState && location.hash.indexOf('group=') < 0) { return lastState; }
    var state = {};
    location.hash.replace(/^#/, '').split('&').forEach(function (part) {
      var kv = part.split('=');
      if (kv.length === 2) { state[kv[0]] = decodeURIComponent(kv[1]); }
    });
    var group = groups[state.group] || groups[groupKeys[0]];
    if (!group) { return null; }
    var keys = group.runs.map(function (r) { return r.run.key; });
    var chosen = (state.runs ? state.runs.split(',') : keys).filter(function (k) { return keys.indexOf(k) >= 0; });
    if (!chosen.length) { chosen = keys; }
    var by = chosen.indexOf(state.by) >= 0 ? state.by : chosen[0];
    var sort = SORTS.some(function (s) { return s[0] === state.sort; }) ? state.sort : SORTS[0][0];
    var cls = state['class'] !== undefined && state['class'] !== '' ? Number(state['class']) : null;
    lastState = {group: group, runs: chosen, by: by, sort: sort, cls: cls,
                 page: Math.max(1, Number(state.page) || 1)};
    return lastState;
  }

  function writeState(state, changes) {
    var next = Object.assign({}, state, changes);
    var parts = ['group=' + encodeURIComponent(next.group.key), 'runs=' + encodeURIComponent(next.runs.join(',')),
                 'by=' + encodeURIComponent(next.by), 'sort=' + next.sort,
                 'class=' + (next.cls === null ? '' : next.cls), 'page=' + next.page];
    location.hash = parts.join('&');
  }

  function select(options, value, onChange) {
    var node = el('select', {}, options.map(function (o) {
      var option = el('option', {value: o[0]}, [o[1]]);
      if (String(o[0]) === String(value)) { option.selected = true; }
      return option;
    }));
    node.addEventListener('change', function () { onChange(node.value); });
    return node;
  }

  function orderedIds(state) {
    var primary = state.group.runs.filter(function (r) { return r.run.key === state.by; })[0];
    var images = primary.head.images;
    var order = images.ids.map(function (id, i) { return i; });
    if (state.cls !== null) {
      order = order.filter(function (i) { return images.classes[i].indexOf(state.cls) >= 0; });
    }
    var key = state.sort.split('-')[0], descending = state.sort.split('-')[1] === 'desc';
    if (key === 'id') {
      order.sort(function (a, b) { return images.ids[a] < images.ids[b] ? -1 : images.ids[a] > images.ids[b] ? 1 : 0; });
    } else {
      var values = images[key];
      order.sort(function (a, b) {
        var va = values[a], vb = values[b];
        if (va === null || vb === null) { return (va === null) - (vb === null) || a - b; }
        return (descending ? vb - va : va - vb) || a - b;
      });
    }
    return {primary: primary, ids: order.map(function (i) { return images.ids[i]; })};
  }

  function renderGallery() {
    var controls = document.getElementById('gallery-controls');
    var gallery = document.getElementById('gallery');
    controls.textContent = '';
    gallery.textContent = '';
    var state = readState();
    if (!state) {
      gallery.appendChild(el('p', {'class': 'notes'}, ['No run has per-image scores and predictions to show: score a run (make MODEL; solve/score.py keeps them).']));
      return;
    }
    var group = state.group;
    controls.appendChild(el('label', {}, ['split ', select(groupKeys.map(function (k) { return [k, groups[k].title]; }),
      group.key, function (value) { writeState(state, {group: groups[value], runs: [], by: null, cls: null, page: 1}); })]));
    var boxes = el('span', {'class': 'run-choice'}, ['runs: ']);
    group.runs.forEach(function (r) {
      var box = el('input', {type: 'checkbox', value: r.run.key});
      box.checked = state.runs.indexOf(r.run.key) >= 0;
      box.addEventListener('change', function () {
        var chosen = group.runs.map(function (x) { return x.run.key; }).filter(function (k) {
          return k === r.run.key ? box.checked : state.runs.indexOf(k) >= 0;
        });
        writeState(state, {runs: chosen, page: 1});
      });
      boxes.appendChild(el('label', {}, [box, r.run.name + ' ']));
    });
    controls.appendChild(boxes);
    controls.appendChild(el('label', {}, ['sort by ', select(state.runs.map(function (k) {
      return [k, group.runs.filter(function (r) { return r.run.key === k; })[0].run.name];
    }), state.by, function (value) { writeState(state, {by: value, page: 1}); }), ' ',
      select(SORTS, state.sort, function (value) { writeState(state, {sort: value, page: 1}); })]));
    controls.appendChild(el('label', {}, ['class present ', select([['', 'any']].concat(group.classes.map(function (name, i) {
      return [i, i + ' ' + name];
    })), state.cls === null ? '' : state.cls, function (value) {
      writeState(state, {cls: value === '' ? null : Number(value), page: 1});
    })]));

    var ordered = orderedIds(state);
    var pages = Math.max(1, Math.ceil(ordered.ids.length / PAGE_SIZE));
    var page = Math.min(state.page, pages);
    var shown = ordered.ids.slice((page - 1) * PAGE_SIZE, page * PAGE_SIZE);
    gallery.appendChild(pager(state, page, pages, ordered.ids.length));
    var chosen = group.runs.filter(function (r) { return state.runs.indexOf(r.run.key) >= 0; });
    var set = PAGE.sets[group.set];
    var multi = ordered.primary.head.images.multi;
    var header = el('tr', {}, [el('th', {rowspan: '2'}, ['image']), el('th', {rowspan: '2'}, ['ground truth'])].concat(
      chosen.map(function (r) { return el('th', {'class': 'run-name', colspan: '2'}, [r.run.name]); })));
    var subheader = el('tr', {}, [].concat.apply([], chosen.map(function () {
      return [el('th', {}, ['prediction']), el('th', {}, ['errors'])];
    })));
    var rows = shown.map(function (id) {
      var i = ordered.primary.index[id];
      var images = ordered.primary.head.images;
      var unreadable = set.missing[id];
      var row = el('tr', {'class': 'image-row', 'data-id': id,
                          'data-mean-iu': images.mean_iu[i] === null ? '' : images.mean_iu[i],
                          'data-pixel-acc': images.pixel_acc[i] === null ? '' : images.pixel_acc[i],
                          'data-classes': images.classes[i].join(' ')}, [
        el('td', {}, [unreadable ? absent('image missing: ' + unreadable) :
                      picture(fileUrl('sets/' + group.set, '', false, id, '.jpg'), id),
                      el('div', {'class': 'caption'}, [id + ' · classes ' + images.classes[i].map(function (c) {
                        return group.classes[c];
                      }).join(', ')])]),
        el('td', {}, [unreadable ? absent('ground truth missing') :
                      picture(fileUrl('sets/' + group.set + '/gt', group.label, multi, id, '.png'), 'ground truth ' + id)])
      ]);
      chosen.forEach(function (r) {
        var j = r.index[id];
        // One measure a line: the caption sits under a 128-pixel thumbnail.
        var caption = el('div', {'class': 'caption'}, j === undefined ? ['not scored'] : [
          'mean IU ' + percent(r.head.images.mean_iu[j]), el('br'),
          'pixel acc ' + percent(r.head.images.pixel_acc[j])]);
        var predicted = j !== undefined && !r.noPrediction[id];
        row.appendChild(el('td', {'class': 'run-cell', 'data-run': r.run.key}, [
          predicted ? picture(fileUrl('runs/' + r.run.key + '/pred', group.label, multi, id, '.png'), r.run.name + ' ' + id)
                    : absent('no prediction saved for ' + id), caption]));
        row.appendChild(el('td', {'class': 'error-cell', 'data-run': r.run.key}, [
          predicted && !unreadable ? picture(fileUrl('runs/' + r.run.key + '/err', group.label, multi, id, '.png'), 'errors ' + id)
                                   : absent(unreadable ? 'no ground truth' : 'no prediction')]));
      });
      return row;
    });
    gallery.appendChild(el('table', {'class': 'gallery', id: 'gallery-table'}, [el('thead', {}, [header, subheader]), el('tbody', {}, rows)]));
    gallery.appendChild(pager(state, page, pages, ordered.ids.length));
  }

  function pager(state, page, pages, count) {
    var previous = el('button', {type: 'button'}, ['‹ previous']);
    var next = el('button', {type: 'button'}, ['next ›']);
    previous.disabled = page <= 1;
    next.disabled = page >= pages;
    previous.addEventListener('click', function () { writeState(state, {page: page - 1}); });
    next.addEventListener('click', function () { writeState(state, {page: page + 1}); });
    var number = el('input', {type: 'number', min: '1', max: String(pages), value: String(page)});
    number.addEventListener('change', function () { writeState(state, {page: Number(number.value) || 1}); });
    return el('div', {'class': 'pager'}, [previous, 'page ', number, ' of ' + pages, next,
                                          el('span', {'class': 'notes'}, [count + ' images'])]);
  }

  // A link to a run (#run-KEY) opens its details.
  function openLinkedRun() {
    var target = location.hash.indexOf('#run-') === 0 && document.getElementById(location.hash.slice(1));
    if (target) { target.open = true; target.scrollIntoView(); }
  }

  renderRuns();
  renderReproduction();
  renderLegends();
  renderGallery();
  openLinkedRun();
  window.addEventListener('hashchange', function () {
    if (location.hash.indexOf('group=') >= 0) { renderGallery(); } else { openLinkedRun(); }
  });
}());
