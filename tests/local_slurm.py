#!/usr/bin/env python3
"""A real single-node SLURM on this machine, for the cluster tests: Debian's slurm-wlm
and munge, started as root in a folder of their own (slurm.conf, a fresh munge key and
socket, state, spool and logs), a `cpu` partition of 2 CPUs, on free local ports; the
system's own SLURM and munge configuration is not touched.

  local_slurm.py install     # apt-get the packages if missing (root), else say why not

`LocalSlurm(folder)` starts the daemons; `env()` points SLURM's commands at them;
`stop()` cancels every job and stops each daemon it started, by its pid.
"""
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

PACKAGES = ('slurm-wlm', 'munge')
PROGRAMS = ('munged', 'slurmctld', 'slurmd', 'sbatch', 'squeue', 'scontrol', 'scancel')
CPUS = 2
NODE = 'fcnnode'


def missing_programs():
    return [program for program in PROGRAMS
            if not shutil.which(program, path=os.environ.get('PATH', '') + ':/usr/sbin')]


def install():
    """Install the packages where they are missing. Returns None when SLURM is ready,
    else the reason it is not (for a test's skip)."""
    if not missing_programs():
        return None
    if os.geteuid() != 0:
        return (f'a local SLURM needs {" ".join(PACKAGES)} and root to start it; as root: '
                f'apt-get install {" ".join(PACKAGES)}')
    for command in (['apt-get', 'update'],
                    ['apt-get', 'install', '-y', '--no-install-recommends', *PACKAGES]):
        result = subprocess.run(command, capture_output=True, text=True,
                                env={**os.environ, 'DEBIAN_FRONTEND': 'noninteractive'})
        if result.returncode != 0:
            return f'`{" ".join(command)}` failed: {result.stderr.strip()[-500:]}'
    missing = missing_programs()
    return f'installed {" ".join(PACKAGES)} but {", ".join(missing)} missing' if missing else None


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def program(name):
    return shutil.which(name, path=os.environ.get('PATH', '') + ':/usr/sbin')


class LocalSlurm:
    def __init__(self, folder):
        self.folder = Path(folder)
        self.conf = self.folder / 'slurm.conf'
        self.pid_files = []  # of the daemons started, in the order to stop them (reversed)

    def env(self):
        return {**os.environ, 'SLURM_CONF': str(self.conf)}

    def write_config(self):
        munge = self.folder / 'munge'
        host = socket.gethostname().split('.')[0]
        # cred_expire also sets how long a requeued job waits before it may start again
        # (120 s by default); a short wait keeps the requeue test short.
        self.conf.write_text('\n'.join([
            'ClusterName=fcntest',
            f'SlurmctldHost={host}(127.0.0.1)',
            f'SlurmctldPort={free_port()}',
            f'SlurmdPort={free_port()}',
            'AuthType=auth/munge',
            'CredType=cred/munge',
            f'AuthInfo=socket={munge}/munge.socket,cred_expire=10',
            'SlurmUser=root',
            'SlurmdUser=root',
            f'StateSaveLocation={self.folder}/state',
            f'SlurmdSpoolDir={self.folder}/spool',
            f'SlurmctldPidFile={self.folder}/slurmctld.pid',
            f'SlurmdPidFile={self.folder}/slurmd.pid',
            f'SlurmctldLogFile={self.folder}/log/slurmctld.log',
            f'SlurmdLogFile={self.folder}/log/slurmd.log',
            'ProctrackType=proctrack/linuxproc',
            'TaskPlugin=task/none',
            'JobAcctGatherType=jobacct_gather/none',
            'AccountingStorageType=accounting_storage/none',
            'JobCompType=jobcomp/none',
            'SelectType=select/cons_tres',
            'SelectTypeParameters=CR_CPU',
            'SlurmdParameters=config_overrides',
            'MpiDefault=none',
            'ReturnToService=2',
            f'NodeName={NODE} NodeHostname={host} NodeAddr=127.0.0.1 CPUs={CPUS} State=UNKNOWN',
            f'PartitionName=cpu Nodes={NODE} Default=YES MaxTime=INFINITE State=UP',
        ]) + '\n')

    def start(self, timeout=60):
        """Start munged, slurmctld and slurmd; return once the node takes jobs."""
        for sub in ('munge', 'state', 'spool', 'log'):
            (self.folder / sub).mkdir(parents=True, exist_ok=True)
        munge = self.folder / 'munge'
        munge.chmod(0o711)
        key = munge / 'munge.key'
        key.write_bytes(os.urandom(1024))
        key.chmod(0o400)
        self.write_config()
        self.daemon(munge / 'munged.pid', [
            program('munged'), '--force', f'--socket={munge}/munge.socket',
            f'--key-file={key}', f'--pid-file={munge}/munged.pid',
            f'--log-file={munge}/munged.log', f'--seed-file={munge}/munged.seed'])
        self.daemon(self.folder / 'slurmctld.pid', [program('slurmctld'), '-f', str(self.conf)])
        self.daemon(self.folder / 'slurmd.pid', [program('slurmd'), '-f', str(self.conf),
                                                 '-N', NODE])
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            state = subprocess.run(['sinfo', '--noheader', '--format', '%T'], env=self.env(),
                                   capture_output=True, text=True).stdout.strip()
            if state == 'idle':
                return
            time.sleep(0.5)
        raise RuntimeError(f'the local SLURM did not come up in {timeout} s: '
                           f'{self.log_tail()}')

    def daemon(self, pid_file, command):
        result = subprocess.run(command, capture_output=True, text=True, env=self.env())
        if result.returncode != 0:
            raise RuntimeError(f'{command[0]} failed to start: {result.stderr.strip()}\n'
                               f'{self.log_tail()}')
        deadline = time.monotonic() + 10
        while not Path(pid_file).is_file() and time.monotonic() < deadline:
            time.sleep(0.1)
        self.pid_files.append(Path(pid_file))

    def log_tail(self, lines=20):
        tails = []
        for log in sorted(self.folder.glob('**/*.log')):
            text = log.read_text(errors='replace').splitlines()[-lines:]
            tails.append(f'--- {log}\n' + '\n'.join(text))
        return '\n'.join(tails)

    def stop(self, timeout=30):
        """Cancel every job, wait for them to end, then stop the daemons started."""
        if self.pid_files[1:]:
            subprocess.run(['scancel', '--user', 'root'], env=self.env(), capture_output=True)
            deadline = time.monotonic() + timeout
            while time.monotonic() < deadline and subprocess.run(
                    ['squeue', '--noheader'], env=self.env(), capture_output=True,
                    text=True).stdout.strip():
                time.sleep(0.5)
        for pid_file in reversed(self.pid_files):
            pid = int(pid_file.read_text().split()[0]) if pid_file.is_file() else None
            if pid is None:
                continue
            try:
                os.kill(pid, 15)
            except ProcessLookupError:
                continue
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline and process_exists(pid):
                time.sleep(0.1)
            if process_exists(pid):
                os.kill(pid, 9)
        self.pid_files = []


def process_exists(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


if __name__ == '__main__':
    if sys.argv[1:] != ['install']:
        print(__doc__)
        sys.exit(0 if sys.argv[1:2] in (['-h'], ['--help']) else 2)
    reason = install()
    print(reason or 'SLURM is installed: ' + ', '.join(map(program, PROGRAMS)))
