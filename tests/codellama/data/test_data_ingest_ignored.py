import subprocess

from codellama.data.ingest import list_code_files


def test_directory_ignored_by_an_enclosing_checkout_is_read_whole(tmp_path):
    """A source under a checkout that ignores it (a Python install under a dotfiles repo) still has files."""
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("vendored/\n")
    (tmp_path / "tracked.py").write_text("x = 1\n")
    lib = tmp_path / "vendored" / "lib"
    lib.mkdir(parents=True)
    (lib / "a.py").write_text("def a():\n    return 1\n")
    (lib / "b.rs").write_text("fn main() {}\n")
    assert [p.name for p in list_code_files(tmp_path / "vendored")] == ["a.py", "b.rs"]
    assert [p.name for p in list_code_files(tmp_path)] == ["tracked.py"]
