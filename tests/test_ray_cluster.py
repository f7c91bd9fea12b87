"""A real two-node Ray cluster on 127.0.0.1 (`ray start`, one CPU per node): a smoke study over --address
survives the loss of the worker node mid-study with results identical to a local sweep; a request no node
holds, a missing auth token and a port that does not speak Ray fail at once with one line.

Every address is loopback. Ray resolves "127.0.0.1" to the machine's outward address unless it is told the
cluster is a single machine (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which also makes the head listen on
127.0.0.1 only); `ray start --address` refuses to join under that setting, so the worker node is `ray start`
with that one resolution patched to keep 127.0.0.1. The cluster has its own temp dir, ports and token
(RAY_AUTH_TOKEN, nothing written to ~/.ray), and is stopped by signalling only the processes it started."""

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import yaml

from gstlab.store import CHECKPOINT, PREVIOUS_CHECKPOINT, load_checkpoint
from test_study import index, results

pytestmark = [pytest.mark.slow, pytest.mark.ray]
pytest.importorskip("ray")

RAY = [sys.executable, "-m", "ray.scripts.scripts"]
WORKER_RAY = [sys.executable, "-c", (
    "import sys\n"
    "from ray._common.network_utils import is_localhost\n"
    "from ray._private import services\n"
    "services.resolve_ip_for_localhost = lambda host: '127.0.0.1' if is_localhost(host) else host\n"
    "from ray.scripts.scripts import main\n"
    "sys.argv[0] = 'ray'\n"
    "main()\n")]
NODE = ["--num-cpus", "1", "--object-store-memory", str(80 * 2**20), "--disable-usage-stats", "--block"]
RUN = {  # 30 epochs of 0.1-0.2 s on one core: long enough to be cut off mid-way
    "data": {"name": "synthetic", "synthetic_shape": [1, 8, 8], "synthetic_train": 1024, "synthetic_test": 256},
    "model": {"arch": "mlp", "hidden": [64, 48], "batch_norm": True},
    "optim": {"name": "adam", "lr": 0.01, "milestones": [20]},
    "train": {"epochs": 30, "batch_size": 32, "eval_batch_size": 128, "progress": False},
    "pruning": {"criterion": "l2", "side": "largest", "period": 2,
                "layers": [{"name": "fc1", "fraction": 0.5, "start": 1, "end": 21}]},
}
STUDY = {"name": "ray_cluster", "seeds": 2, "settings": [
    {"inline": RUN, "label": "L"}, {"inline": RUN, "label": "S", "set": {"pruning.side": "smallest"}}]}


def free_ports(n: int) -> list[int]:
    sockets = [socket.socket() for _ in range(n)]
    for s in sockets:
        s.bind(("127.0.0.1", 0))
    ports = [s.getsockname()[1] for s in sockets]
    for s in sockets:
        s.close()
    return ports


def node_ports() -> list[str]:
    ports = free_ports(14)
    flags = ["--node-manager-port", "--object-manager-port", "--dashboard-agent-listen-port",
             "--dashboard-agent-grpc-port", "--runtime-env-agent-port", "--metrics-export-port"]
    return [*(x for flag, port in zip(flags, ports) for x in (flag, str(port))),
            "--worker-port-list", ",".join(map(str, ports[len(flags):]))]


def session(pid: int) -> list[int]:
    """Processes in the session of ``pid`` (each node is started in a session of its own)."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.getsid(int(entry.name)) == pid:
                    members.append(int(entry.name))
            except OSError:
                pass
    return members


def named(pids: list[int], name: str) -> list[int]:
    found = []
    for pid in pids:
        try:
            if Path(f"/proc/{pid}/comm").read_text().strip() == name:
                found.append(pid)
        except OSError:
            pass
    return found


class Cluster:
    def __init__(self, root: Path):
        self.root, self.nodes = root, []
        token = secrets.token_hex(32)
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0", "OMP_NUM_THREADS": "1"}
        self.port = free_ports(1)[0]
        self.address = f"127.0.0.1:{self.port}"

    def start(self) -> None:
        self._node("head", [*RAY, "start", "--head", "--node-ip-address", "127.0.0.1", "--port", str(self.port),
                            "--ray-client-server-port", str(free_ports(1)[0]), "--include-dashboard", "false",
                            "--temp-dir", str(self.root / "ray"), *NODE, *node_ports()], self.env)
        worker_env = {k: v for k, v in self.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
        self._node("worker", [*WORKER_RAY, "start", "--address", self.address, *NODE, *node_ports()], worker_env)

    def _node(self, name: str, command: list[str], env: dict, timeout: float = 120) -> None:
        log = self.root / f"{name}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        self.nodes.append(proc)
        deadline = time.monotonic() + timeout
        while "block forever" not in log.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"ray {name} node did not start: {log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.5)

    def worker_busy(self) -> bool:
        """A Ray worker process of the worker node is executing a run (Ray titles it after the task)."""
        return bool(named(session(self.nodes[1].pid), "ray::_ray_task"))

    def lose_worker_node(self) -> None:
        """Lose the worker node as a machine that fails would: SIGKILL every process it started (its raylet, agents
        and the Ray worker executing a run) and wait until they are gone. Killing the raylet alone left the Ray
        worker running for a moment on a fast CPU, long enough to finish its run, so nothing was left to resume."""
        members = session(self.nodes[1].pid)
        assert len(named(members, "raylet")) == 1
        for pid in members:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        deadline = time.monotonic() + 30
        while any(alive(pid) for pid in members):
            assert time.monotonic() < deadline, "the worker node's processes outlived SIGKILL"
            time.sleep(0.05)

    def stop(self) -> None:
        """SIGTERM each node's `ray start --block` (it stops its node), then SIGKILL what is left of its session."""
        for proc in reversed(self.nodes):
            if proc.poll() is None:
                proc.terminate()
        for proc in self.nodes:
            try:
                proc.wait(timeout=40)
            except subprocess.TimeoutExpired:
                pass
            for pid in session(proc.pid):
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
        time.sleep(1)
        assert [pid for proc in self.nodes for pid in session(proc.pid) if alive(pid)] == []


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def cluster():
    root = Path(tempfile.mkdtemp(prefix="gstray-", dir="/tmp"))  # short: Ray's unix sockets live under it
    ray_cluster = Cluster(root)
    try:
        ray_cluster.start()
        yield ray_cluster
    finally:
        ray_cluster.stop()
        shutil.rmtree(root, ignore_errors=True)


def gst(args: list[str], env: dict, cwd: Path, **popen) -> subprocess.Popen:
    src = str(Path(__file__).parents[1] / "src")
    env = {**env, "PYTHONPATH": os.pathsep.join([src, env.get("PYTHONPATH", "")])}
    return subprocess.Popen([sys.executable, "-m", "gstlab.cli", *args, "--no-progress"], env=env, cwd=cwd,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **popen)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str, str, float]:
    start = time.monotonic()
    out, err = proc.communicate(timeout=timeout)
    return proc.returncode, out, err, time.monotonic() - start


def write_study(tmp_path: Path) -> Path:
    path = tmp_path / "study.yaml"
    path.write_text(yaml.safe_dump(STUDY))
    return path


def test_a_request_no_node_holds_and_a_missing_token_fail_at_once(cluster, tmp_path):
    study = write_study(tmp_path)
    sweep = ["sweep", str(study), "--executor", "ray", "--address", cluster.address, "--out", str(tmp_path / "s")]
    code, _, err, wall = finish(gst([*sweep, "--threads-per-worker", "2"], cluster.env, tmp_path))
    assert code == 2 and err.count("\n") == 1 and wall < 60, err
    assert "--threads-per-worker 2: each run asks for 2 CPUs" in err and "nodes: 1 CPUs/0 GPUs, 1 CPUs/0 GPUs" in err
    no_token = {k: v for k, v in cluster.env.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN")}
    code, _, err, wall = finish(gst(sweep, no_token, tmp_path))
    assert code == 2 and err.count("\n") == 1 and wall < 30, err
    assert "refused the connection" in err and "RAY_AUTH_MODE=token" in err
    assert not (tmp_path / "s").exists()


def test_an_address_that_does_not_speak_ray_fails_at_once(tmp_path):
    with socket.socket() as listener:  # accepts connections, never answers
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        address = f"127.0.0.1:{listener.getsockname()[1]}"
        code, _, err, wall = finish(gst(["sweep", str(write_study(tmp_path)), "--executor", "ray", "--address",
                                         address, "--out", str(tmp_path / "s")], dict(os.environ), tmp_path))
    assert code == 2 and err.count("\n") == 1 and wall < 30, err
    assert f"--address {address}: no Ray cluster answers there" in err


def test_a_study_survives_losing_a_node_with_results_identical_to_a_local_sweep(cluster, tmp_path):
    study = write_study(tmp_path)
    local, remote = tmp_path / "local", tmp_path / "ray"
    start = time.monotonic()
    sweep = gst(["sweep", str(study), "--executor", "ray", "--address", cluster.address, "--out", str(remote)],
                cluster.env, tmp_path)  # default: one thread per run, so both one-CPU nodes run one each
    while not (cluster.worker_busy() and len(running(remote)) == 2):  # one run on each node, both checkpointed
        assert sweep.poll() is None and time.monotonic() - start < 240, sweep.communicate()
        time.sleep(0.1)
    both = running(remote)
    cluster.lose_worker_node()
    cut = {run: checkpoint_epoch(remote / "runs" / run) for run in both}  # the lost run's is final now
    code, out, err, _ = finish(sweep, timeout=400)
    wall = time.monotonic() - start
    assert code == 0, out + err
    assert "4 runs executed now" in out and "0 failed" in out
    assert [row["status"] for row in index(remote)] == ["finished"] * 4
    resumed = {row["run_id"]: json.loads((remote / "runs" / row["run_id"] / "manifest.json").read_text())
               .get("resumed_at_epoch") for row in index(remote)}
    lost = [run for run, epoch in resumed.items() if epoch]  # the worker node's run, resumed on the head
    assert len(lost) == 1 and lost[0] in cut and resumed[lost[0]] == cut[lost[0]] > 0, (cut, resumed)
    code, out, err, _ = finish(gst(["sweep", str(study), "--out", str(local), "--workers", "2",
                                    "--threads-per-worker", "1"], dict(os.environ, OMP_NUM_THREADS="1"), tmp_path),
                               timeout=400)
    assert code == 0, out + err
    for row in index(local):
        assert results(Path(row["run_dir"])) == results(remote / "runs" / row["run_id"])
    print(f"ray sweep with a node lost: {wall:.0f} s; resumed at {resumed}, checkpoints at the kill {cut}")


def running(study_dir: Path) -> list[str]:
    """Runs with a checkpoint and no summary: cut off now, they would resume."""
    runs = study_dir / "runs"
    return sorted(p.name for p in runs.iterdir() if (p / "checkpoint.pt").exists()
                  and not (p / "summary.json").exists()) if runs.exists() else []


def checkpoint_epoch(run_dir: Path) -> int:
    """The epoch a resume of ``run_dir`` starts at: its checkpoint's, or the previous one's when the run was cut
    off between the two renames of a checkpoint save (0: neither, e.g. the run finished meanwhile)."""
    for name in (CHECKPOINT, PREVIOUS_CHECKPOINT):
        try:
            return int(load_checkpoint(run_dir / name)["epoch"])
        except FileNotFoundError:
            pass
    return 0
