"""gradeclip.files: a final name holds a whole file or nothing, whatever stops the writer."""
import json
import os

import pytest

from gradeclip.files import atomic_path, is_partial, partial_name, write_bytes, write_json, write_text


def test_renamed_to_the_final_name_only_when_the_block_completes(tmp_path):
    """While the block runs the final name does not exist and the temporary one sits beside it, keeping the suffix
    (matplotlib and FFmpeg pick the format from it); afterwards only the final name exists, with the content.
    Catches writing straight to the final name, a temporary in another folder (rename across file systems), a
    suffix lost from the temporary name, or a missing rename."""
    final = tmp_path / "figure.pdf"
    with atomic_path(final) as temp:
        assert temp.parent == final.parent and temp.suffix == ".pdf" and temp != final
        assert is_partial(temp) and not is_partial(final)
        temp.write_bytes(b"%PDF-1.4 whole %%EOF")
        assert not final.exists()
    assert final.read_bytes() == b"%PDF-1.4 whole %%EOF"
    assert sorted(os.listdir(tmp_path)) == ["figure.pdf"]


@pytest.mark.parametrize("stop", [RuntimeError("disk full"), KeyboardInterrupt()])
def test_an_exception_or_ctrl_c_removes_the_temporary_and_leaves_no_final_name(tmp_path, stop):
    """Catches an except clause that handles Exception only (Ctrl-C is a BaseException and would leave the
    temporary file behind), a rename in a ``finally`` (a half file under the final name), or a swallowed error."""
    final = tmp_path / "maps.json"
    with pytest.raises(type(stop)):
        with atomic_path(final) as temp:
            temp.write_text('{"cosine": [0.1')  # half a file
            raise stop
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("stop", [ValueError("bad value"), KeyboardInterrupt()])
def test_an_older_final_file_survives_a_failed_rewrite(tmp_path, stop):
    """A rerun that fails keeps the previous complete file untouched. Catches removing or truncating the final
    name before writing (``open(final, 'w')`` first) or unlinking the final name on failure instead of the
    temporary one."""
    final = tmp_path / "scores.json"
    write_json(final, {"cosine": [0.25, 0.5]})
    before = final.read_bytes()
    with pytest.raises(type(stop)):
        with atomic_path(final) as temp:
            temp.write_text("{")
            raise stop
    assert final.read_bytes() == before
    assert json.loads(final.read_text()) == {"cosine": [0.25, 0.5]}
    assert os.listdir(tmp_path) == ["scores.json"]


def test_a_completed_rewrite_replaces_the_older_file(tmp_path):
    """Catches a rename that refuses to replace an existing file (``os.rename`` on Windows, ``link``)."""
    final = tmp_path / "a.txt"
    write_text(final, "old")
    write_text(final, "new")
    assert final.read_text() == "new" and os.listdir(tmp_path) == ["a.txt"]


def test_a_writer_that_wrote_nothing_is_an_error_not_a_missing_file(tmp_path):
    """Catches a silent success when the writer produced no file (the caller would report a path that does not
    exist)."""
    with pytest.raises(FileNotFoundError, match="produced no file"):
        with atomic_path(tmp_path / "empty.png"):
            pass
    assert os.listdir(tmp_path) == []


def test_helpers_write_whole_values(tmp_path):
    """write_bytes, write_text and write_json: exact content under the final name, returned as the path.
    Catches a helper that drops its content, its encoding or JSON options."""
    assert write_bytes(tmp_path / "b.bin", b"\x00\xff") == tmp_path / "b.bin"
    assert (tmp_path / "b.bin").read_bytes() == b"\x00\xff"
    write_text(tmp_path / "t.txt", "é", encoding="latin-1")
    assert (tmp_path / "t.txt").read_bytes() == b"\xe9"
    write_json(tmp_path / "j.json", {"b": 1, "a": [1.5]}, sort_keys=True)
    text = (tmp_path / "j.json").read_text()
    assert json.loads(text) == {"a": [1.5], "b": 1} and text.index('"a"') < text.index('"b"') and text.endswith("\n")


def test_partial_names_are_recognised_and_per_process(tmp_path):
    """is_partial tells leftovers of a killed process from user files (a file named like ``.notes.txt`` or one
    containing "partial" is not one). Catches a check on the mark alone or on the leading dot alone, and a
    temporary name shared by two processes writing the same file."""
    temp = partial_name(tmp_path / "clip.mp4")
    assert is_partial(temp) and str(os.getpid()) in temp.name and temp.suffix == ".mp4"
    assert not is_partial(tmp_path / ".notes.txt")
    assert not is_partial(tmp_path / "my.partial-1.mp4")
