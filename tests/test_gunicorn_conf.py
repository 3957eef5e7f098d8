"""gunicorn.conf.py: what a start does to the metrics folder an operator names."""

import importlib.util

from devtools.processes import ROOT


def test_a_start_deletes_only_prometheus_files_from_the_metrics_folder(tmp_path, monkeypatch):
    monkeypatch.setenv("PROMETHEUS_MULTIPROC_DIR", str(tmp_path))
    (tmp_path / "counter_123.db").write_bytes(b"old")
    (tmp_path / "gauge_livesum_123.db").write_bytes(b"old")
    (tmp_path / "notes.txt").write_text("the operator's")
    (tmp_path / "backups").mkdir()
    (tmp_path / "backups" / "x.db").write_bytes(b"the operator's")
    spec = importlib.util.spec_from_file_location("gunicorn_conf_under_test", ROOT / "gunicorn.conf.py")
    conf = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(conf)
    conf.on_starting(None)
    assert sorted(path.name for path in tmp_path.iterdir()) == ["backups", "notes.txt"]
    assert (tmp_path / "backups" / "x.db").read_bytes() == b"the operator's"
    conf.on_exit(None)  # a folder the operator named is never removed
    assert (tmp_path / "notes.txt").is_file()
