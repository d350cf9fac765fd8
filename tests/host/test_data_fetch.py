"""`kit data fetch` against a real HTTP server on 127.0.0.1 (tests/host/dataserver.py): zips of real JPEGs,
connections broken half-way, servers that ignore Range, checksum mismatches, truncated zips, the hub's listing and
resolve URLs (with its CDN redirect), OCR-VQA covers with dead URLs, the free-disk check, mirrors and dry runs."""

from __future__ import annotations

import hashlib
import io
import json
import os
import random
import re
import shutil
import zipfile
from pathlib import Path

import pytest
from PIL import Image
from rich.console import Console
from typer.testing import CliRunner

from kit.cli import app
from kit.data import fetch, http

from .dataserver import DataServer, etag

runner = CliRunner()
REFERENCE = """schema = "kit.data-sources/1"
case = "llava1_5_7b"
[reference]
pretrain_records = 1
finetune_records = 1
"""


@pytest.fixture(scope="module")
def server():
    s = DataServer().start()
    yield s
    s.stop()


@pytest.fixture
def srv(server, monkeypatch):
    """The module's server, emptied; retries without waiting, so a test of a broken connection takes no time."""
    server.reset()
    monkeypatch.setattr(http, "BACKOFF_S", 0.0)
    return server


@pytest.fixture
def hf_env(tmp_path, monkeypatch):
    """No token stored or set for the hub: each test says which it uses."""
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.delenv("HUGGING_FACE_HUB_TOKEN", raising=False)
    monkeypatch.setenv("HF_HUB_DISABLE_TELEMETRY", "1")


def invoke(*args: str, **env: str):
    return runner.invoke(app, ["data", "fetch", *args], env={"COLUMNS": "1000", **env})


def text(r) -> str:
    return " ".join(r.output.split())


def row(r, name: str) -> list[str]:
    """The cells of a source's row in the summary table."""
    for line in r.output.splitlines():
        cells = [c.strip() for c in line.strip("│ ").split("│")]
        if cells and cells[0] == name:
            return cells
    raise AssertionError(f"no row for {name} in:\n{r.output}")


def jpeg(seed: int, side: int = 160) -> bytes:
    """A real JPEG of noise (so it does not compress: the archives have some size)."""
    rnd = random.Random(seed)
    img = Image.frombytes("RGB", (side, side), bytes(rnd.getrandbits(8) for _ in range(side * side * 3)))
    buf = io.BytesIO()
    img.save(buf, "JPEG", quality=95)
    return buf.getvalue()


def gif(seed: int) -> bytes:
    buf = io.BytesIO()
    Image.new("P", (40, 60), seed % 256).save(buf, "GIF")
    return buf.getvalue()


def make_zip(folder: str, n: int, seed: int = 0, extra: dict[str, bytes] | None = None) -> tuple[bytes, dict[str, bytes]]:
    files = {f"{folder}/{seed:03d}{i:05d}.jpg": jpeg(seed * 1000 + i) for i in range(n)}
    files.update(extra or {})
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as zf:
        zf.writestr(f"{folder}/", b"")
        for name, data in files.items():
            zf.writestr(name, data)
    return buf.getvalue(), files


def toml_value(v) -> str:
    if isinstance(v, str):
        return json.dumps(v)
    if isinstance(v, list):
        return "[" + ", ".join(json.dumps(x) for x in v) + "]"
    return str(v)


def sources_file(tmp_path: Path, *sources: dict) -> Path:
    body = REFERENCE + "".join(
        "\n[[source]]\n" + "".join(f"{k} = {toml_value(v)}\n" for k, v in s.items()) for s in sources)
    p = tmp_path / "sources.toml"
    p.write_text(body)
    return p


def http_source(name: str, url: str, unpack: str, yields: str, **kw) -> dict:
    return {"name": name, "what": f"{name} images", "kind": "http", "url": url, "root": "data", "unpack": unpack,
            "yields": yields, "bytes": 1000, "unpacked_bytes": 1000, **kw}


def coco(srv: DataServer, n: int = 12, **kw) -> tuple[dict, bytes, dict[str, bytes]]:
    data, files = make_zip("train2017", n)
    srv.files["/coco/train2017.zip"] = data
    src = http_source("coco", srv.url + "/coco/train2017.zip", "coco", "coco/train2017",
                      md5=hashlib.md5(data).hexdigest(), **kw)
    return src, data, files


def assert_unpacked(root: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        p = root / name
        assert p.read_bytes() == data, name
        with Image.open(p) as img:
            img.load()


def state(root: Path) -> dict:
    return json.loads((root / ".kit-data" / "fetch-state.json").read_text())


# ---------------------------------------------------------------- http sources


def test_a_zip_of_jpegs_is_fetched_md5_checked_unpacked_and_the_archive_removed(tmp_path, srv):
    src, data, files = coco(srv)
    data_dir = tmp_path / "data"
    r = invoke("--data", str(data_dir), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0, r.output
    assert_unpacked(data_dir / "coco", files)
    assert not (data_dir / "train2017.zip").exists()
    assert not list((data_dir / ".kit-data" / "downloads").rglob("*.part"))
    assert not list((data_dir / "coco").glob(".kit-unpack-*"))
    rec = state(data_dir)["files"]["train2017.zip"]
    assert rec["md5"] == src["md5"] and rec["sha256"] == hashlib.sha256(data).hexdigest() and rec["size"] == len(data)
    assert rec["check"] == "matched published md5" and rec["url"] == src["url"]
    assert row(r, "coco")[1:4] == ["fetched", http.human(len(data)), "matched published md5"]
    assert "all 1 sources are fetched" in text(r)
    # Plain lines when the output is not a terminal: the file's start and end, never cut.
    assert f"coco train2017.zip: started ({http.human(len(data))})" in r.output


def test_keep_archives_keeps_the_zip_beside_the_unpacked_folder(tmp_path, srv):
    src, data, files = coco(srv)
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)), "--keep-archives")
    assert r.exit_code == 0, r.output
    assert (tmp_path / "d" / "train2017.zip").read_bytes() == data
    assert_unpacked(tmp_path / "d" / "coco", files)


def test_a_connection_broken_half_way_continues_with_a_range_request(tmp_path, srv):
    src, data, files = coco(srv, n=20)
    srv.breaks["/coco/train2017.zip"] = [len(data) // 2]
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0, r.output
    gets = srv.requests("GET", "/coco/")
    assert len(gets) == 2 and "Range" not in gets[0].headers
    first = int(gets[1].headers["Range"].removeprefix("bytes=").removesuffix("-"))
    assert first == len(data) // 2 and gets[1].status == 206
    assert gets[1].headers["If-Range"] == etag(data)
    assert srv.sent("/coco/train2017.zip") == len(data) < 1.5 * len(data)
    assert state(tmp_path / "d")["files"]["train2017.zip"]["sha256"] == hashlib.sha256(data).hexdigest()
    assert_unpacked(tmp_path / "d" / "coco", files)
    assert "(after 2 attempts, each continuing from the bytes on disk)" in text(r)


def test_an_interrupted_download_continues_in_the_next_run(tmp_path, srv, monkeypatch):
    monkeypatch.setattr(http, "RETRIES", 1)
    src, data, files = coco(srv, n=20)
    half = len(data) // 2
    srv.breaks["/coco/train2017.zip"] = [half, 1000]  # the first run gets half, then 1000 bytes, then gives up
    sources = str(sources_file(tmp_path, src))
    r = invoke("--data", str(tmp_path / "d"), "--sources", sources)
    assert r.exit_code == 1, r.output
    part = tmp_path / "d" / ".kit-data" / "downloads" / "coco" / "train2017.zip.part"
    assert part.stat().st_size == half + 1000
    assert f"are kept in {part} and the next `kit data fetch` continues from there" in text(r)
    assert "fix: run the same `kit data fetch` again" in text(r)
    assert not (tmp_path / "d" / "coco").exists()
    srv.log.clear()
    r = invoke("--data", str(tmp_path / "d"), "--sources", sources)
    assert r.exit_code == 0, r.output
    (get,) = srv.requests("GET")
    assert get.headers["Range"] == f"bytes={half + 1000}-" and get.status == 206
    assert get.sent == len(data) - half - 1000
    assert_unpacked(tmp_path / "d" / "coco", files)
    assert state(tmp_path / "d")["files"]["train2017.zip"]["md5"] == src["md5"]


def test_ctrl_c_keeps_the_partial_download_exits_130_and_the_next_run_continues(tmp_path, srv, monkeypatch):
    src, data, files = coco(srv, n=20)
    srv.breaks["/coco/train2017.zip"] = [len(data) // 2]
    update = fetch.Display.update

    def interrupted(self, key, done, total, counts_bytes=True):
        if done >= len(data) // 2:
            raise KeyboardInterrupt
        update(self, key, done, total, counts_bytes)

    monkeypatch.setattr(fetch.Display, "update", interrupted)
    sources = str(sources_file(tmp_path, src))
    r = invoke("--data", str(tmp_path / "d"), "--sources", sources)
    assert r.exit_code == 130, r.output
    assert "interrupted by SIGINT (Ctrl-C): the partial downloads are kept under .kit-data/downloads/" in text(r)
    assert "the next `kit data fetch` continues where this one stopped" in text(r)
    part = tmp_path / "d" / ".kit-data" / "downloads" / "coco" / "train2017.zip.part"
    assert part.stat().st_size == len(data) // 2
    monkeypatch.setattr(fetch.Display, "update", update)
    srv.log.clear()
    r = invoke("--data", str(tmp_path / "d"), "--sources", sources)
    assert r.exit_code == 0, r.output
    assert [g.headers.get("Range") for g in srv.requests("GET")] == [f"bytes={len(data) // 2}-"]
    assert f"(resumed at {http.human(len(data) // 2)})" in text(r)
    assert_unpacked(tmp_path / "d" / "coco", files)


def test_progress_on_a_terminal_and_plain_lines_every_few_seconds_elsewhere(tmp_path, srv, monkeypatch):
    src, data, _ = coco(srv, n=30)
    sources = sources_file(tmp_path, src)
    buf = io.StringIO()
    term = Console(file=buf, force_terminal=True, width=100)
    outcomes, _, verdict = fetch.fetch(fetch.Options(data=tmp_path / "a", sources_file=sources), term)
    assert [o.status for o in outcomes] == ["fetched"] and verdict.startswith("all 1 sources are fetched")
    assert "all sources" in buf.getvalue() and "\x1b[" in buf.getvalue()  # the live bars
    monkeypatch.setattr(fetch, "PLAIN_EVERY_S", 0.0)
    srv.breaks["/coco/train2017.zip"] = [len(data) // 2]  # two chunks at least
    r = invoke("--data", str(tmp_path / "b"), "--sources", str(sources))
    assert r.exit_code == 0, r.output
    assert re.search(r"coco train2017.zip: [\d.]+ KB of [\d.]+ KB; all: [\d.]+ KB of [\d.]+ KB at [\d.]+ [KMG]?B/s", r.output)


def test_a_second_fetch_into_the_same_folder_waits_for_the_first(tmp_path, srv):
    src, _, _ = coco(srv)
    lock = tmp_path / "d" / ".kit-data" / "fetch.lock"
    lock.parent.mkdir(parents=True)
    import fcntl

    with open(lock, "a") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 1
    assert f"another `kit data fetch` is writing into {tmp_path / 'd'}" in text(r)
    assert srv.requests("GET") == []


def test_a_server_that_ignores_range_restarts_the_download_and_still_ends_right(tmp_path, srv):
    src, data, files = coco(srv, n=20)
    srv.breaks["/coco/train2017.zip"] = [len(data) // 3]
    srv.ignore_range.add("/coco/train2017.zip")
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0, r.output
    gets = srv.requests("GET", "/coco/")
    assert [g.status for g in gets] == [200, 200] and "Range" in gets[1].headers
    assert_unpacked(tmp_path / "d" / "coco", files)
    assert "the server ignored the range: downloaded again from the start" in text(r)


def test_a_checksum_mismatch_keeps_the_file_aside_unpacks_nothing_and_other_sources_still_come(tmp_path, srv):
    src, data, _ = coco(srv)
    src["md5"] = "0" * 32
    gqa_zip, gqa_files = make_zip("images", 5, seed=7)
    srv.files["/gqa/images.zip"] = gqa_zip
    gqa = http_source("gqa", srv.url + "/gqa/images.zip", "gqa", "gqa/images")
    d = tmp_path / "d"
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src, gqa)))
    assert r.exit_code == 1, r.output
    got = hashlib.md5(data).hexdigest()
    (bad,) = (d / ".kit-data" / "bad").iterdir()
    assert bad.name.startswith("train2017.zip.") and bad.read_bytes() == data
    assert (f"coco failed: train2017.zip from {src['url']}: md5 mismatch: expected {'0' * 32}, got {got}; "
            f"the file is kept at {bad} and not used") in text(r)
    assert "fix: run `kit data fetch --only coco` again to download it anew" in text(r)
    assert not (d / "coco").exists() and not (d / "train2017.zip").exists()
    assert_unpacked(d / "gqa", gqa_files)
    assert "1 of 2 sources failed: coco" in text(r)
    assert "coco" not in state(d)["sources"] and "gqa" in state(d)["sources"]


def test_a_truncated_zip_is_named_and_moved_aside(tmp_path, srv):
    data, _ = make_zip("train_images", 10)
    cut = data[: len(data) * 2 // 3]
    srv.files["/textvqa/train_val_images.zip"] = cut
    src = http_source("textvqa", srv.url + "/textvqa/train_val_images.zip", "textvqa", "textvqa/train_images")
    d = tmp_path / "d"
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 1, r.output
    (bad,) = (d / ".kit-data" / "bad").iterdir()
    assert bad.read_bytes() == cut
    assert "train_val_images.zip: not a whole zip archive" in text(r) and "truncated" in text(r)
    assert f"it is kept at {bad}, nothing was unpacked" in text(r)
    assert not (d / "textvqa" / "train_images").exists() and not (d / "train_val_images.zip").exists()


def test_an_entry_outside_the_target_folder_is_refused(tmp_path, srv):
    data, _ = make_zip("vg", 2, extra={"../evil.txt": b"x"})
    srv.files["/vg/images.zip"] = data
    src = http_source("vg", srv.url + "/vg/images.zip", "vg", "vg/vg")
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 1
    assert "entry '../evil.txt' would be written outside the folder it unpacks into" in text(r)
    assert not (tmp_path / "evil.txt").exists() and not (tmp_path / "d" / "evil.txt").exists()


def test_a_second_run_makes_no_request_and_says_so_and_a_lost_folder_is_fetched_again(tmp_path, srv):
    src, data, files = coco(srv)
    args = ["--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src))]
    assert invoke(*args).exit_code == 0
    srv.log.clear()
    r = invoke(*args)
    assert r.exit_code == 0, r.output
    assert srv.requests() == []
    assert "all 1 sources are already fetched" in text(r) and row(r, "coco")[1:4] == ["already there", http.human(len(data)), "matched published md5"]
    shutil.rmtree(tmp_path / "d" / "coco" / "train2017")
    r = invoke(*args)
    assert r.exit_code == 0 and row(r, "coco")[1] == "fetched", r.output
    assert_unpacked(tmp_path / "d" / "coco", files)


def test_an_archive_without_the_expected_folder_says_so(tmp_path, srv):
    data, _ = make_zip("val2017", 2)
    srv.files["/coco/train2017.zip"] = data
    src = http_source("coco", srv.url + "/coco/train2017.zip", "coco", "coco/train2017")
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 1
    assert f"train2017.zip unpacked val2017 into {tmp_path / 'd' / 'coco'}, not {tmp_path / 'd' / 'coco' / 'train2017'}" in text(r)


def test_a_folder_assembled_by_hand_is_left_as_it_is(tmp_path, srv):
    src, _, _ = coco(srv)
    own = tmp_path / "d" / "coco" / "train2017" / "mine.jpg"
    own.parent.mkdir(parents=True)
    own.write_bytes(jpeg(1))
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0 and srv.requests() == []
    assert "found in place, not fetched by kit: `kit data verify` checks it" in text(r)
    assert own.read_bytes() == jpeg(1)


# ---------------------------------------------------------------- free disk, dry run, usage, mirrors


def test_more_bytes_than_the_free_disk_is_refused_before_any_download(tmp_path, srv):
    src, _, _ = coco(srv, unpacked_bytes=10**18)
    d = tmp_path / "d"
    d.mkdir()
    free = shutil.disk_usage(d).free
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 1, r.output
    assert srv.requests("GET") == []
    t = text(r)
    assert f"error: not enough free disk under {d}: the sources to fetch (coco) need" in t
    assert f"{10**18 + len(srv.files['/coco/train2017.zip']):,} bytes" in t and "bytes) are free" in t
    said = int(re.search(r"\(([\d,]+) bytes\) are free", t).group(1).replace(",", ""))
    assert abs(said - free) < 0.01 * free
    assert "--only NAME" in t
    assert not (d / ".kit-data").exists()


def test_a_dry_run_says_what_from_where_to_where_and_writes_nothing(tmp_path, srv):
    src, data, _ = coco(srv)
    d = tmp_path / "d"
    d.mkdir()
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)), "--dry-run")
    assert r.exit_code == 0, r.output
    assert list(d.iterdir()) == [] and srv.requests("GET") == []
    t = text(r)
    assert "would fetch" in t and f"coco: from {src['url']}; needs" in t and str(d / "coco" / "train2017") in t
    assert "dry run: 1 source(s) would be fetched" in t and "nothing was written" in t


def test_an_unknown_source_lists_the_known_ones(tmp_path, srv):
    src, _, _ = coco(srv)
    r = invoke("--data", str(tmp_path), "--sources", str(sources_file(tmp_path, src)), "--only", "cocoa")
    assert r.exit_code == 2
    assert "--only cocoa: no such source in" in text(r) and "known: coco" in text(r)
    r = invoke("--data", str(tmp_path), "--only", "nope")
    assert r.exit_code == 2
    assert "known: pretrain-json, pretrain-images, finetune-json, coco, gqa, textvqa, vg, vg2, ocr_vqa, mmmu, vicuna, clip" in text(r)
    r = invoke("--data", str(tmp_path), "--url", "coco")
    assert r.exit_code == 2 and "expected SOURCE=URL" in text(r)
    r = invoke("--data", str(tmp_path), "--url", "vicuna=http://x/y")
    assert r.exit_code == 2 and "serve it from a hub mirror with --hf-endpoint URL" in text(r)


def test_the_case_sources_plan_every_url_and_leave_the_weights_out_without_models(tmp_path, srv):
    mirror = srv.url + "/mirror"
    r = invoke("--data", str(tmp_path / "d"), "--dry-run", "--mirror", mirror, "--only", "coco,gqa,textvqa,vg,vg2,ocr_vqa")
    assert r.exit_code == 0, r.output
    t = text(r)
    for name, file in (("coco", "train2017.zip"), ("gqa", "images.zip"), ("textvqa", "train_val_images.zip"),
                       ("vg", "images.zip"), ("vg2", "images2.zip"), ("ocr_vqa", "dataset.json")):
        assert f"{name}: from {mirror}/{name}/{file}" in t
    r = invoke("--data", str(tmp_path / "d"), "--dry-run", "--only", "coco", "--url", f"coco={srv.url}/x/train.zip")
    assert r.exit_code == 0 and f"coco: from {srv.url}/x/train.zip" in text(r)
    r = invoke("--data", str(tmp_path / "d"), "--only", "vicuna")
    assert r.exit_code == 2 and "vicuna: weights go under --models DIR" in text(r)


def test_mirror_and_url_serve_the_files(tmp_path, srv):
    data, files = make_zip("train2017", 4)
    srv.files["/mirror/coco/train2017.zip"] = data
    src = http_source("coco", "http://images.invalid/zips/train2017.zip", "coco", "coco/train2017",
                      md5=hashlib.md5(data).hexdigest())
    gqa_zip, gqa_files = make_zip("images", 3, seed=3)
    srv.files["/elsewhere/gqa-images.zip"] = gqa_zip
    gqa = http_source("gqa", "http://downloads.invalid/gqa/images.zip", "gqa", "gqa/images")
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src, gqa)),
               "--mirror", srv.url + "/mirror", "--url", f"gqa={srv.url}/elsewhere/gqa-images.zip")
    assert r.exit_code == 0, r.output
    assert_unpacked(tmp_path / "d" / "coco", files)
    assert_unpacked(tmp_path / "d" / "gqa", gqa_files)
    assert {g.path for g in srv.requests("GET")} == {"/mirror/coco/train2017.zip", "/elsewhere/gqa-images.zip"}


def test_file_urls_are_read_directly(tmp_path, srv):
    data, files = make_zip("images", 3)
    (tmp_path / "images.zip").write_bytes(data)
    src = http_source("gqa", (tmp_path / "images.zip").as_uri(), "gqa", "gqa/images", md5=hashlib.md5(data).hexdigest())
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0, r.output
    assert_unpacked(tmp_path / "d" / "gqa", files)
    assert (tmp_path / "images.zip").read_bytes() == data  # the original is untouched


# ---------------------------------------------------------------- the hub


def hub_weights(srv: DataServer) -> dict[str, bytes]:
    files = {
        "config.json": b'{"architectures": ["LlamaForCausalLM"]}',
        "generation_config.json": b"{}",
        "tokenizer.model": os.urandom(3000),
        "model-00001-of-00002.safetensors": os.urandom(300_000),
        "model-00002-of-00002.safetensors": os.urandom(200_000),
        "model.safetensors.index.json": b'{"weight_map": {}}',
        "pytorch_model-00001-of-00002.bin": os.urandom(100_000),
        "pytorch_model.bin.index.json": b'{"weight_map": {}}',
        "README.md": b"# weights\n",
    }
    lfs = {p for p in files if p.endswith((".safetensors", ".bin", ".model"))}
    srv.add_repo("models", "org/vicuna-7b", files, lfs)
    return files


def hub_source(**kw) -> dict:
    return {"name": "vicuna", "what": "weights", "kind": "hub", "repo": "org/vicuna-7b", "repo_type": "model",
            "root": "models", "allow": ["*.json", "tokenizer.model", "*.safetensors", "*.bin"], "prefer": "safetensors",
            "dest": "vicuna-7b-v1.5", "bytes": 1000, **kw}


def test_hub_files_are_listed_selected_checked_and_the_token_stays_on_the_hub(tmp_path, srv, hf_env):
    files = hub_weights(srv)
    srv.add_repo("datasets", "org/captions", {"caps.json": b"[]", "images.zip": b"not this one"})
    caps = {"name": "captions", "what": "captions", "kind": "hub", "repo": "org/captions", "root": "data",
            "files": ["caps.json"], "dest": "LLaVA-Pretrain"}
    models, d = tmp_path / "models", tmp_path / "d"
    r = invoke("--data", str(d), "--models", str(models), "--sources", str(sources_file(tmp_path, hub_source(), caps)),
               HF_ENDPOINT=srv.url, HF_TOKEN="hf_secret")
    assert r.exit_code == 0, r.output
    want = {p for p in files if not p.endswith((".bin", ".bin.index.json")) and p != "README.md"}
    got = {str(p.relative_to(models / "vicuna-7b-v1.5")) for p in (models / "vicuna-7b-v1.5").rglob("*") if p.is_file()}
    assert got == want
    for p in want:
        assert (models / "vicuna-7b-v1.5" / p).read_bytes() == files[p]
    assert (d / "LLaVA-Pretrain" / "caps.json").read_bytes() == b"[]"
    recs = state(models)["files"]
    assert recs["vicuna-7b-v1.5/model-00001-of-00002.safetensors"]["check"] == "matched hub sha256"
    assert recs["vicuna-7b-v1.5/config.json"]["check"] == "matched hub git oid"
    # The token goes to the hub, never to the CDN it redirects to (another host).
    resolves = srv.requests("GET", "/org/vicuna-7b/resolve/")
    cdn = srv.requests("GET", "/cdn/")
    assert len(cdn) == 3 and all(c.host.startswith("localhost:") for c in cdn)
    assert all(r_.headers.get("Authorization") == "Bearer hf_secret" for r_ in resolves)
    assert all("Authorization" not in c.headers for c in cdn)
    assert row(r, "vicuna")[1:4] == ["fetched", http.human(sum(len(files[p]) for p in want)),
                                     "matched hub git oid (3), matched hub sha256 (3)"]
    # Done: a second run lists nothing and downloads nothing.
    srv.log.clear()
    r = invoke("--data", str(d), "--models", str(models), "--sources", str(sources_file(tmp_path, hub_source(), caps)),
               HF_ENDPOINT=srv.url)
    assert r.exit_code == 0 and srv.requests() == [] and "all 2 sources are already fetched" in text(r)


def test_a_hub_file_that_does_not_match_its_listed_sha256_is_caught(tmp_path, srv, hf_env):
    files = hub_weights(srv)
    repo = srv.repos[("models", "org/vicuna-7b")]
    bad = bytearray(files["model-00002-of-00002.safetensors"])
    bad[1000] ^= 0xFF
    repo.served["model-00002-of-00002.safetensors"] = bytes(bad)
    models = tmp_path / "m"
    r = invoke("--models", str(models), "--sources", str(sources_file(tmp_path, hub_source())), "--hf-endpoint", srv.url)
    assert r.exit_code == 1, r.output
    want = hashlib.sha256(files["model-00002-of-00002.safetensors"]).hexdigest()
    got = hashlib.sha256(bytes(bad)).hexdigest()
    assert f"sha256 mismatch: expected {want}, got {got}" in text(r)
    (kept,) = (models / ".kit-data" / "bad").iterdir()
    assert kept.read_bytes() == bytes(bad)
    assert not (models / "vicuna-7b-v1.5" / "model-00002-of-00002.safetensors").exists()


def test_hub_files_already_in_place_are_hashed_and_kept_and_others_put_aside(tmp_path, srv, hf_env):
    files = hub_weights(srv)
    dest = tmp_path / "m" / "vicuna-7b-v1.5"
    dest.mkdir(parents=True)
    (dest / "model-00001-of-00002.safetensors").write_bytes(files["model-00001-of-00002.safetensors"])
    (dest / "tokenizer.model").write_bytes(b"an older tokenizer")
    r = invoke("--models", str(tmp_path / "m"), "--sources", str(sources_file(tmp_path, hub_source())), "--hf-endpoint", srv.url)
    assert r.exit_code == 0, r.output
    assert "vicuna-7b-v1.5/model-00001-of-00002.safetensors: found in place, matched hub sha256" in text(r)
    fetched = {g.path.rsplit("/", 1)[-1] for g in srv.requests("GET", "/org/vicuna-7b/resolve/")}
    assert "model-00001-of-00002.safetensors" not in fetched and "tokenizer.model" in fetched
    assert (dest / "tokenizer.model").read_bytes() == files["tokenizer.model"]
    (old,) = (tmp_path / "m" / ".kit-data" / "replaced").iterdir()
    assert old.name.startswith("tokenizer.model.") and old.read_bytes() == b"an older tokenizer"


def test_a_gated_hub_repository_says_how_to_get_access(tmp_path, srv, hf_env):
    hub_weights(srv)
    srv.repos[("models", "org/vicuna-7b")].gated = True
    r = invoke("--models", str(tmp_path / "m"), "--sources", str(sources_file(tmp_path, hub_source())),
               "--hf-endpoint", srv.url)
    assert r.exit_code == 1, r.output
    t = text(r)
    assert f"org/vicuna-7b: access denied (HTTP 401) at {srv.url}: the repository is gated or private and no Hugging Face token is set" in t
    assert f"open {srv.url}/org/vicuna-7b while logged in and accept its terms, then `hf auth login` (or export HF_TOKEN=hf_...)" in t


def test_a_hub_archive_is_unpacked(tmp_path, srv, hf_env):
    data, files = make_zip("00000", 6)
    srv.add_repo("datasets", "org/pretrain", {"images.zip": data, "caps.json": b"[]"}, {"images.zip"})
    src = {"name": "pretrain-images", "what": "images", "kind": "hub", "repo": "org/pretrain", "root": "data",
           "files": ["images.zip"], "dest": "LLaVA-Pretrain", "unpack": "LLaVA-Pretrain/images",
           "yields": "LLaVA-Pretrain/images", "bytes": 10, "unpacked_bytes": 10}
    d = tmp_path / "d"
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)), "--hf-endpoint", srv.url)
    assert r.exit_code == 0, r.output
    assert_unpacked(d / "LLaVA-Pretrain" / "images", files)
    assert not (d / "LLaVA-Pretrain" / "images.zip").exists()
    assert state(d)["files"]["LLaVA-Pretrain/images.zip"]["check"] == "matched hub sha256"


# ---------------------------------------------------------------- OCR-VQA covers


def test_covers_live_ones_saved_as_jpg_dead_ones_listed_and_the_fetch_still_succeeds(tmp_path, srv):
    covers = {"111": jpeg(11), "222": gif(22), "333": None, "444": None}
    index = {
        "111": {"imageURL": srv.url + "/amazon/111.jpg", "title": "a"},
        "222": {"imageURL": srv.url + "/amazon/222.jpg", "title": "b"},  # a GIF under a .jpg name
        "333": {"imageURL": srv.url + "/amazon/333.jpg", "title": "c"},  # 404
        "444": {"imageURL": "http://127.0.0.1:9/444.jpg", "title": "d"},  # nothing listens there
        "555": {"imageURL": srv.url + "/amazon/555.jpg", "title": "not named by the records"},
    }
    for k, v in covers.items():
        if v is not None:
            srv.files[f"/amazon/{k}.jpg"] = v
    srv.files["/amazon/555.jpg"] = jpeg(55)
    srv.files["/ocr/dataset.json"] = json.dumps(index).encode()
    d = tmp_path / "d"
    d.mkdir()
    records = [{"id": k, "image": f"ocr_vqa/images/{k}.jpg", "conversations": []} for k in ("111", "222", "333", "444", "666")]
    records.append({"id": "c", "image": "coco/train2017/1.jpg", "conversations": []})
    (d / "llava_v1_5_mix665k.json").write_text(json.dumps(records))
    src = {"name": "ocr_vqa", "what": "covers", "kind": "covers", "url": srv.url + "/ocr/dataset.json", "root": "data",
           "dest": "ocr_vqa/images", "yields": "ocr_vqa/images", "bytes": 1000}
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)), "--jobs", "4")
    assert r.exit_code == 0, r.output
    images = d / "ocr_vqa" / "images"
    assert sorted(p.name for p in images.iterdir()) == ["111.jpg", "222.jpg"]
    assert (images / "111.jpg").read_bytes() == covers["111"] and (images / "222.jpg").read_bytes() == covers["222"]
    report = json.loads((d / ".kit-data" / "ocr_vqa-missing.json").read_text())
    assert [(m["id"], m["reason"].split(" (")[0]) for m in report["missing"]] == [
        ("333", "HTTP 404"), ("444", report["missing"][1]["reason"].split(" (")[0]), ("666", "not in the index")]
    assert "cannot connect" in report["missing"][1]["reason"]
    t = text(r)
    assert "3 of 5 covers named by llava_v1_5_mix665k.json cannot be had (first: 333 (HTTP 404); 444 (" in t
    assert f"kit data fix --data {d}` writes a record file without them" in t
    assert not srv.requests("GET", "/amazon/555")
    # Done, and a second run fetches nothing.
    srv.log.clear()
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)))
    assert r.exit_code == 0 and srv.requests() == [] and "already fetched" in text(r)
    # Named with --only, it tries the missing covers again (and only those).
    srv.files["/amazon/333.jpg"] = jpeg(33)
    r = invoke("--data", str(d), "--sources", str(sources_file(tmp_path, src)), "--only", "ocr_vqa")
    assert r.exit_code == 0, r.output
    assert {g.path for g in srv.requests("GET", "/amazon/")} == {"/amazon/333.jpg"}
    assert (images / "333.jpg").read_bytes() == jpeg(33)
    assert [m["id"] for m in json.loads((d / ".kit-data" / "ocr_vqa-missing.json").read_text())["missing"]] == ["444", "666"]


def test_covers_without_an_index_url_say_where_to_get_it(tmp_path, srv):
    src = {"name": "ocr_vqa", "what": "covers", "kind": "covers", "url": "", "root": "data", "dest": "ocr_vqa/images",
           "yields": "ocr_vqa/images", "index": "OCR-VQA's dataset.json", "home": "https://ocr-vqa.github.io/"}
    gqa_zip, _ = make_zip("images", 2)
    srv.files["/gqa/images.zip"] = gqa_zip
    gqa = http_source("gqa", srv.url + "/gqa/images.zip", "gqa", "gqa/images")
    r = invoke("--data", str(tmp_path / "d"), "--sources", str(sources_file(tmp_path, gqa, src)))
    assert r.exit_code == 1
    t = text(r)
    assert "ocr_vqa failed: ocr_vqa: no URL for OCR-VQA's dataset.json" in t
    assert "https://ocr-vqa.github.io/" in t and "--url ocr_vqa=file:///path/to/dataset.json" in t
    assert (tmp_path / "d" / "gqa" / "images").is_dir()
    # The case's own sources file says the same: the index's name and home are data there, not code.
    r = invoke("--data", str(tmp_path / "e"), "--only", "ocr_vqa", "--dry-run")
    t = text(r)
    assert r.exit_code == 1 and "ocr_vqa: no URL for OCR-VQA's dataset.json" in t and "https://ocr-vqa.github.io/" in t
