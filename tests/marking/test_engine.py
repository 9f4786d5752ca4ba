"""Engines: where the per-file jobs of protect/materialize run must not change a single byte."""

import hashlib
import sys

import pytest

from tracemark.errors import TracemarkError
from tracemark.evaluation.samples import make_sample_dataset
from tracemark.marking.engine import check_engine, run_jobs
from tracemark.marking.materialize import materialize
from tracemark.marking.protect import protect

from registry_helpers import seeded_registry


def file_hashes(root):
    return {p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file()}


def square(job):
    """A module-level job function (pickled by reference, as process_file is)."""
    return {"job": job, "value": job * job, "error": None}


def test_unknown_engine_is_a_one_line_error(tmp_path, registry):
    with pytest.raises(TracemarkError, match="^engine must be one of local, ray"):
        check_engine("spark")
    data = make_sample_dataset(tmp_path / "d", n=4, size=32, seed=0)
    with pytest.raises(TracemarkError, match="^engine must be one of"):
        protect(data, tmp_path / "c", "acme", registry=registry, engine="spark")
    assert not (tmp_path / "c").exists() and registry.copies() == []


def test_missing_ray_is_a_one_line_error_before_anything_is_written(tmp_path, registry, monkeypatch):
    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    data = make_sample_dataset(tmp_path / "d", n=4, size=32, seed=0)
    with pytest.raises(TracemarkError, match="ray is not installed") as exc:
        protect(data, tmp_path / "c", "acme", registry=registry, engine="ray")
    assert "\n" not in str(exc.value)
    assert not (tmp_path / "c").exists() and registry.copies() == []


def test_an_address_where_no_cluster_listens_fails_fast(tmp_path):
    """ray.init would retry for minutes; the probe answers in one line (no ray needed to get there)."""
    import socket
    import time

    from tracemark.marking.engine import _probe

    with socket.socket() as s:  # a port that was free a moment ago
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    t = time.perf_counter()
    with pytest.raises(TracemarkError, match=f"^address 127.0.0.1:{port}: no Ray cluster answers there"):
        _probe(f"127.0.0.1:{port}")
    assert time.perf_counter() - t < 6
    _probe("auto")  # Ray's own resolution: nothing to probe


def test_local_engine_keeps_job_order_serial_and_pooled():
    jobs = list(range(40))
    seen = []
    assert [r["value"] for r in run_jobs(jobs, square, workers=1, progress=lambda d, t: seen.append((d, t)))] == \
        [j * j for j in jobs]
    assert seen[-1] == (40, 40)
    assert [r["value"] for r in run_jobs(jobs, square, workers=2)] == [j * j for j in jobs]


@pytest.fixture(scope="module")
def ray_cluster():
    ray = pytest.importorskip("ray", reason="ray is not installed (optional: pip install 'tracemark[ray]')")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield ray
    ray.shutdown()


def test_ray_engine_keeps_job_order(ray_cluster):
    def cube(job):  # defined here: Ray pickles it by value (the test module is not importable on workers)
        return {"job": job, "value": job ** 3, "error": None}

    jobs = list(range(50))
    seen = []
    results = run_jobs(jobs, cube, engine="ray", progress=lambda d, t: seen.append(d))
    assert [r["job"] for r in results] == jobs and [r["value"] for r in results] == [j ** 3 for j in jobs]
    assert seen[-1] == 50 and seen == sorted(seen)
    assert ray_cluster.is_initialized()  # a cluster the caller started is the caller's to shut down


def test_ray_and_local_engines_write_byte_identical_copies(ray_cluster, tmp_path):
    data = make_sample_dataset(tmp_path / "data", n=24, size=64, seed=4, fmt="mixed")
    copies = {}
    for engine in ("local", "ray"):  # one registry each: the same master key gives the same licensee key
        reg = seeded_registry(tmp_path / f"home_{engine}")
        res = protect(data, tmp_path / engine, "acme", registry=reg, rate=0.5, workers=2, engine=engine)
        assert res.n_marked == 12
        copies[engine] = file_hashes(tmp_path / engine)
    assert copies["ray"] == copies["local"] and len(copies["ray"]) == 25
    materialize(reg, "acme", tmp_path / "mat_ray", engine="ray")  # the last registry: the ray one
    assert file_hashes(tmp_path / "mat_ray") == copies["local"]
