"""`kit data verify` and `kit data fix` on generated data directories with planted faults (tests/host/datagen.py):
every fault named in the report and the JSON, the exit codes, the manifest and its digest, the fast second verify,
a read-only data directory, and fix's repairs with every original kept."""

from __future__ import annotations

import hashlib
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from PIL import Image, ImageChops, ImageStat
from typer.testing import CliRunner

from kit.cli import app
from kit.data import audit as verify_mod
from kit.data import manifest

from . import datagen

runner = CliRunner()
ROOT = Path(__file__).resolve().parents[2]


def invoke(*args: str | Path):
    return runner.invoke(app, [str(a) for a in args], env={"COLUMNS": "1000"})


def text(r) -> str:
    return " ".join(r.stdout.split())


def as_json(r) -> dict:
    return json.loads(r.stdout)


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(root: Path, skip_state: bool = True) -> dict[str, str]:
    """sha256 of every file under root (without kit's own state, unless asked)."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        if p.is_file() and not (skip_state and (rel.startswith(".kit-data") or rel == manifest.MANIFEST_NAME)):
            out[rel] = sha(p)
    return out


@pytest.fixture
def planted(tmp_path: Path) -> datagen.Planted:
    p = datagen.make(tmp_path / "data")
    datagen.write_models(tmp_path / "models")
    return p


@pytest.fixture
def clean(tmp_path: Path) -> datagen.Planted:
    return datagen.make(tmp_path / "clean", faults=False)


def test_verify_names_every_planted_fault(planted, tmp_path):
    root, f = planted.root, planted.faults
    before = snapshot(root)
    r = invoke("data", "verify", "--data", root, "--models", tmp_path / "models", "--jobs", "2")
    assert r.exit_code == 1, r.output
    t = text(r)
    assert f"FAIL images: missing: coco: 1 missing file(s) named by 1 record(s) finetune record #{f['missing']['index']} " \
           f"(id 'coco-missing'): coco/train2017/000000000099.jpg: not found" in t
    assert "images: unreadable: gqa" in t and "gqa/images/3.jpg: OSError: image file is truncated" in t
    assert "warn images: wrong-format: ocr_vqa" in t and "ocr_vqa/images/200.jpg: GIF bytes under a .jpg name" in t
    assert "ocr_vqa/images/300.jpg: not found; ocr_vqa/images/300.png exists (kit data fix writes the .jpg from it)" in t
    assert "kit data fix --data" in t and "writes 1 of them from a file with the same stem" in t
    assert "FAIL images: empty: vg" in t and "vg/VG_100K/2.jpg: 0 bytes" in t
    for name in ("schema", "gpt-first", "placeholders", "text-image"):
        fault = f[name]
        assert f"FAIL finetune records: {name}: 1 record(s)" in t
        assert f"finetune record #{fault['index']} (id {fault['id']!r})" in t
    assert "FAIL pretrain records: plain-shape: 1 record(s)" in t and "(id 'bad-plain')" in t
    assert "ok LLM weights" in t and "ok CLIP weights" in t and "ok MMMU: 30 subjects" in t
    assert "decoding images:" in r.stderr and "(100%)" in r.stderr  # plain progress lines when not a terminal
    assert snapshot(root) == before  # verify changes no data file

    # The JSON says the same, decoded again in one process.
    j = as_json(invoke("data", "verify", "--data", root, "--json", "--full", "--jobs", "1"))
    assert j["ok"] is False
    probs = j["images"]["problems"]
    assert {k: probs[k]["total"] for k in probs} == {"missing": 2, "unreadable": 1, "wrong-format": 1, "empty": 1}
    first = probs["missing"]["by_source"]["coco"]["first"][0]
    assert first == {"stage": "finetune", "index": f["missing"]["index"], "id": "coco-missing",
                     "path": "coco/train2017/000000000099.jpg", "detail": "not found"}
    assert probs["wrong-format"]["by_source"]["ocr_vqa"]["first"][0]["path"] == "ocr_vqa/images/200.jpg"
    assert probs["empty"]["by_source"]["vg"]["files"] == 1
    ft = j["stages"]["finetune"]
    assert ft["bad_records"] == {"schema": 1, "gpt-first": 1, "placeholders": 1, "text-image": 1}
    assert ft["bad_first"]["schema"] == [{"index": f["schema"]["index"], "id": "bad-schema",
                                          "why": "missing 'conversations' (a non-empty list of {from, value} turns)"}]
    assert ft["records"] == len(planted.finetune) and ft["reference"] == 665_298
    assert ft["by_source"] == {"coco": 5, "gqa": 4, "ocr_vqa": 3, "text-only": 3, "textvqa": 1, "vg": 3}
    assert j["stages"]["pretrain"]["bad_records"] == {"plain-shape": 1}
    assert j["images"]["decoded"] == j["images"]["unique"] - 3 and j["images"]["cached"] == 0  # 2 missing, 1 empty
    assert j["folders"]["coco/train2017"] == {"files": 2, "reference": 118_287}


def test_clean_data_verifies_and_writes_the_manifest(clean, tmp_path):
    datagen.write_models(tmp_path / "models")
    root = clean.root
    r = invoke("data", "verify", "--data", root, "--models", tmp_path / "models")
    assert r.exit_code == 0, r.output
    assert "verified: a run can use this data" in text(r)
    assert "fewer than the reference's 665,298" in text(r)  # a warning, not a failure
    m = manifest.read(root)
    assert m["schema"] == manifest.SCHEMA and m["case"] == "llava1_5_7b" and m["ok"] is True
    assert m["written"].endswith("Z") and m["kit_version"] and m["data_root"] == str(root)
    ft = m["stages"]["finetune"]
    path = root / datagen.FINETUNE_JSON
    assert ft["file"] == datagen.FINETUNE_JSON and ft["sha256"] == sha(path) and ft["bytes"] == path.stat().st_size
    assert ft["records"] == len(clean.finetune) and ft["bad_records"] == {} and ft["mtime_ns"] == path.stat().st_mtime_ns
    assert m["stages"]["pretrain"]["records"] == len(clean.pretrain)
    h = hashlib.sha256()
    for rel in sorted(clean.images):
        h.update(f"{rel}\0{(root / rel).stat().st_size}\n".encode())
    assert m["images"]["digest"] == h.hexdigest() and m["images"]["unique"] == len(clean.images)
    assert m["images"]["problems"] == {}
    assert m["digest"] == manifest.digest_of(m["stages"], m["images"])
    assert m["weights"]["llm"]["files"] == 2 and m["weights"]["llm"]["problems"] == []
    assert m["eval_data"]["groups"] == 30 and m["folders"]["vg/VG_100K_2"]["reference"] == 43_903
    ident = manifest.identity(m)
    assert ident["digest"] == m["digest"] and ident["ok"] is True
    assert ident["stages"]["finetune"] == {"file": datagen.FINETUNE_JSON, "sha256": ft["sha256"],
                                           "records": len(clean.finetune), "bad_records": 0}
    assert ident["images"]["digest"] == m["images"]["digest"]
    assert manifest.stale(root, m) == []
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert manifest.stale(root, m) == [datagen.FINETUNE_JSON]


def test_digest_equal_for_copies_and_changed_by_one_record(clean, tmp_path):
    copy = tmp_path / "copy"
    shutil.copytree(clean.root, copy)
    a = as_json(invoke("data", "verify", "--data", clean.root, "--json"))
    b = as_json(invoke("data", "verify", "--data", copy, "--json"))
    assert a["manifest"]["digest"] == b["manifest"]["digest"] == manifest.read(copy)["digest"]
    recs = json.loads((copy / datagen.FINETUNE_JSON).read_text())
    recs[0]["conversations"][1]["value"] += " Also a square."
    (copy / datagen.FINETUNE_JSON).write_text(json.dumps(recs))
    c = as_json(invoke("data", "verify", "--data", copy, "--json"))
    assert c["manifest"]["digest"] != a["manifest"]["digest"]
    assert c["images"]["digest"] == a["images"]["digest"]  # same image list, different records
    assert c["stages"]["finetune"]["from_cache"] is False


def test_second_verify_only_stats_and_touching_one_image_decodes_only_it(clean, monkeypatch):
    root = clean.root
    n = len(clean.images)
    first = as_json(invoke("data", "verify", "--data", root, "--json", "--jobs", "1"))
    assert first["images"]["decoded"] == n and first["images"]["cached"] == 0

    def no_decoding(path):  # --jobs 1 decodes in this process: a call here is a decode
        raise AssertionError(f"decoded {path} again")

    monkeypatch.setattr(verify_mod, "check_image", no_decoding)
    second = as_json(invoke("data", "verify", "--data", root, "--json", "--jobs", "1"))
    assert second["images"]["decoded"] == 0 and second["images"]["cached"] == n
    assert second["stages"]["finetune"]["from_cache"] and second["stages"]["pretrain"]["from_cache"]
    assert second["manifest"]["digest"] == first["manifest"]["digest"]
    monkeypatch.undo()
    touched = root / "gqa/images/2.jpg"
    st = touched.stat()
    os.utime(touched, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    third = as_json(invoke("data", "verify", "--data", root, "--json", "--jobs", "1"))
    assert third["images"]["decoded"] == 1 and third["images"]["cached"] == n - 1
    full = as_json(invoke("data", "verify", "--data", root, "--json", "--full", "--jobs", "2"))
    assert full["images"]["decoded"] == n and full["images"]["cached"] == 0 and full["ok"]


def test_read_only_data_directory_warns_and_writes_nothing(tmp_path):
    """Root writes through file modes, so as root the data directory is bind-mounted read-only in a private mount
    namespace (unshare -m) and the command runs there; otherwise the directory is made read-only with chmod."""
    p = datagen.make(tmp_path / "data", faults=False, mmmu=False)
    if os.geteuid() == 0:
        if not shutil.which("unshare"):
            pytest.skip("as root a read-only directory needs a read-only mount: no unshare(1) here")
        code = "import sys; from kit.cli import app; sys.argv = ['kit', *sys.argv[1:]]; app()"
        d = shlex.quote(str(p.root))
        script = (f"mount --bind {d} {d} && mount -o remount,bind,ro {d} && touch {d}/probe 2>/dev/null && exit 99; "
                  f"exec {shlex.quote(sys.executable)} -c {shlex.quote(code)} data verify --data {d}")
        proc = subprocess.run(["unshare", "-m", "sh", "-c", script], cwd=ROOT, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "COLUMNS": "1000"})
        if proc.returncode == 99 or "mount:" in proc.stderr or "unshare:" in proc.stderr:
            pytest.skip(f"cannot make a read-only bind mount here: {proc.stderr.strip()[-200:]}")
        out, code_ = " ".join(proc.stdout.split()), proc.returncode
    else:
        os.chmod(p.root, 0o555)
        try:
            r = invoke("data", "verify", "--data", p.root)
        finally:
            os.chmod(p.root, 0o755)
        out, code_ = text(r), r.exit_code
    assert code_ == 0, out
    assert f"{p.root} is read-only: no data manifest written and no cache kept" in out
    assert "verified: a run can use this data" in out
    assert not manifest.path(p.root).exists() and not (p.root / verify_mod.STATE_DIR).exists()


def test_fix_rewrites_keeps_originals_and_writes_an_exact_filtered_file(planted):
    root, f = planted.root, planted.faults
    gif, png = root / "ocr_vqa/images/200.jpg", root / "ocr_vqa/images/300.png"
    gif_bytes, png_bytes = gif.read_bytes(), png.read_bytes()
    records = {rel: sha(root / rel) for rel in (datagen.FINETUNE_JSON, datagen.PRETRAIN_JSON)}
    invoke("data", "verify", "--data", root)  # the caches exist, as after a real verify

    everything = snapshot(root, skip_state=False)
    dry = invoke("data", "fix", "--data", root, "--dry-run", "--write-filtered")
    assert "would rewrite ocr_vqa/images/200.jpg: GIF bytes under a .jpg name -> JPEG" in text(dry)
    assert "would write ocr_vqa/images/300.jpg as JPEG from ocr_vqa/images/300.png" in text(dry)
    assert "would write llava_v1_5_mix665k.filtered.json" in text(dry)
    assert snapshot(root, skip_state=False) == everything  # nothing changed, not even kit's own state

    r = invoke("data", "fix", "--data", root, "--write-filtered")
    assert r.exit_code == 0, r.output
    t = text(r)
    assert "rewrite ocr_vqa/images/200.jpg: GIF bytes under a .jpg name -> JPEG; original kept as " \
           ".kit-data/originals/ocr_vqa/images/200.jpg" in t
    assert "a run uses it with: --set data.finetune_json=llava_v1_5_mix665k.filtered.json" in t
    assert "--set data.pretrain_json=LLaVA-Pretrain/blip_laion_cc_sbu_558k.filtered.json" in t
    for name in ("missing", "truncated", "empty", "schema"):
        assert f"record #{f[name]['index']} (id {f[name]['id']!r})" in t
    # The GIF: a real JPEG now, its pixels the GIF's first frame in RGB (within JPEG error); the GIF kept as it was.
    with Image.open(gif) as im:
        assert im.format == "JPEG"
        diff = ImageStat.Stat(ImageChops.difference(im.convert("RGB"), datagen.first_frame_rgb(gif_bytes))).mean
    assert max(diff) < 4, diff  # the second frame (solid red) would differ by about 100
    assert (root / ".kit-data/originals/ocr_vqa/images/200.jpg").read_bytes() == gif_bytes
    # The PNG-only image: a JPEG at the .jpg name, the PNG untouched.
    with Image.open(root / "ocr_vqa/images/300.jpg") as im:
        assert im.format == "JPEG"
        diff = ImageStat.Stat(ImageChops.difference(im.convert("RGB"), datagen.first_frame_rgb(png_bytes))).mean
    assert max(diff) < 4 and png.read_bytes() == png_bytes
    assert {rel: sha(root / rel) for rel in records} == records  # the record files, byte for byte
    assert not list(root.rglob("*.kit-fix.tmp"))

    # The filtered file: the original's records without exactly the unusable ones; the sidecar says which and why.
    dropped = {f[n]["index"]: n for n in ("missing", "truncated", "empty", "schema", "gpt-first", "placeholders",
                                          "text-image")}  # fmt: skip
    out = root / "llava_v1_5_mix665k.filtered.json"
    assert json.loads(out.read_text()) == [r for i, r in enumerate(planted.finetune) if i not in dropped]
    side = json.loads((root / "llava_v1_5_mix665k.filtered.json.kit-filter.json").read_text())
    assert side["schema"] == "kit.data-filter/1"
    assert side["source"] == {"file": datagen.FINETUNE_JSON, "sha256": records[datagen.FINETUNE_JSON],
                              "records": len(planted.finetune)}
    assert side["output"] == {"file": "llava_v1_5_mix665k.filtered.json", "sha256": sha(out),
                              "records": len(planted.finetune) - len(dropped)}
    reasons = {"missing": "missing", "truncated": "unreadable", "empty": "empty"}
    assert [(d["index"], d["id"], d["reason"]) for d in side["dropped"]] == [
        (i, f[n]["id"], reasons.get(n, n)) for i, n in sorted(dropped.items())]
    assert side["dropped"][0]["detail"] == "coco/train2017/000000000099.jpg: not found"
    assert side["counts"] == {"empty": 1, "gpt-first": 1, "missing": 1, "placeholders": 1, "schema": 1,
                              "text-image": 1, "unreadable": 1}
    pre = json.loads((root / "LLaVA-Pretrain/blip_laion_cc_sbu_558k.filtered.json.kit-filter.json").read_text())
    assert [(d["id"], d["reason"]) for d in pre["dropped"]] == [("bad-plain", "plain-shape")]

    # A run naming the filtered files finds nothing to stop on; a second fix has nothing to do and keeps the original.
    ok = invoke("data", "verify", "--data", root, "--set", "data.finetune_json=llava_v1_5_mix665k.filtered.json",
                "--set", "data.pretrain_json=LLaVA-Pretrain/blip_laion_cc_sbu_558k.filtered.json")
    assert ok.exit_code == 0, ok.output
    again = invoke("data", "fix", "--data", root)
    assert "no image to rewrite" in text(again)
    assert (root / ".kit-data/originals/ocr_vqa/images/200.jpg").read_bytes() == gif_bytes


def test_fix_refuses_to_overwrite_a_filtered_file_it_did_not_write(planted):
    (planted.root / "llava_v1_5_mix665k.filtered.json").write_text("mine")
    r = invoke("data", "fix", "--data", planted.root, "--write-filtered")
    assert r.exit_code == 2
    assert "exists and was not written by kit data fix" in " ".join(r.output.split())
    assert (planted.root / "llava_v1_5_mix665k.filtered.json").read_text() == "mine"


def test_fix_completes_an_interrupted_rewrite(planted):
    """A fix stopped after the original was kept and before the new file was renamed into place (the name is
    free): the next fix renames it there. One stopped before keeping the original: redone from the original."""
    from kit.data import fix as fix_mod

    root = planted.root
    gif = root / "ocr_vqa/images/200.jpg"
    gif_bytes = gif.read_bytes()
    kept = root / ".kit-data/originals/ocr_vqa/images/200.jpg"
    kept.parent.mkdir(parents=True)
    data, _ = fix_mod.jpeg_bytes(gif)
    (gif.with_name("200.jpg" + fix_mod.TMP_SUFFIX)).write_bytes(data)
    os.replace(gif, kept)
    (root / ".kit-data" / fix_mod.JOURNAL).write_text(json.dumps({"entries": [{"path": "ocr_vqa/images/200.jpg",
                                                                               "kind": "rewrite"}]}))
    r = invoke("data", "fix", "--data", root)
    assert "completed an interrupted fix: ocr_vqa/images/200.jpg" in text(r)
    assert gif.read_bytes() == data and kept.read_bytes() == gif_bytes
    assert not (root / ".kit-data" / fix_mod.JOURNAL).exists() and not list(root.rglob("*.kit-fix.tmp"))

    # Stopped before the original was kept: the half-written file is dropped and the image fixed from the original.
    shutil.copyfile(kept, gif)
    kept.unlink()
    (gif.with_name("200.jpg" + fix_mod.TMP_SUFFIX)).write_bytes(b"half a jpeg")
    (root / ".kit-data" / fix_mod.JOURNAL).write_text(json.dumps({"entries": [{"path": "ocr_vqa/images/200.jpg",
                                                                               "kind": "rewrite"}]}))
    r = invoke("data", "fix", "--data", root)
    assert "rewrite ocr_vqa/images/200.jpg: GIF bytes" in text(r)
    assert kept.read_bytes() == gif_bytes and Image.open(gif).format == "JPEG"


def test_weights_and_mmmu_faults_are_named(planted, tmp_path):
    models = tmp_path / "models"
    llm, clip = models / "vicuna-7b-v1.5", models / "clip-vit-large-patch14-336"
    shard = llm / "model-00001-of-00002.safetensors"
    whole = shard.stat().st_size
    shard.write_bytes(shard.read_bytes()[:-10])
    (llm / "model-00002-of-00002.safetensors").unlink()
    (clip / "config.json").write_text("{not json")
    with zipfile.ZipFile(clip / "pytorch_model.bin", "w") as z:
        z.writestr("archive/data.pkl", b"x" * 4000)
    (clip / "pytorch_model.bin").write_bytes((clip / "pytorch_model.bin").read_bytes()[:2000])
    mmmu = planted.root / "MMMU"
    shutil.rmtree(mmmu / "Art")
    bio = mmmu / "Biology/validation-00000-of-00001.parquet"
    bio.write_bytes(bio.read_bytes()[:-8])
    r = invoke("data", "verify", "--data", planted.root, "--models", models)
    assert r.exit_code == 1
    t = text(r)
    assert f"model-00001-of-00002.safetensors: the header says {whole:,} bytes, the file holds {whole - 10:,} (truncated)" in t
    assert "model.safetensors.index.json names 1 missing shard(s): model-00002-of-00002.safetensors" in t
    assert "FAIL CLIP weights" in t and "config.json does not parse" in t
    assert "pytorch_model.bin: a truncated zip archive" in t
    assert "FAIL MMMU" in t and "1 of 30 subjects have no validation-*.parquet: Art" in t
    assert "Biology/validation-00000-of-00001.parquet: not a whole parquet file" in t


def test_manifest_api(tmp_path):
    assert manifest.read(tmp_path) is None
    manifest.path(tmp_path).write_text("{broken")
    with pytest.raises(manifest.ManifestError, match=f"{manifest.path(tmp_path)}: not valid JSON"):
        manifest.read(tmp_path)
    manifest.path(tmp_path).write_text(json.dumps({"schema": "kit.data-manifest/0"}))
    with pytest.raises(manifest.ManifestError, match="expected 'kit.data-manifest/1'"):
        manifest.read(tmp_path)
    assert manifest.write(tmp_path / "absent", {"schema": manifest.SCHEMA}) is None
    doc = {"schema": manifest.SCHEMA, "stages": {}, "images": {}, "digest": "d"}
    assert manifest.write(tmp_path, doc) == manifest.path(tmp_path) and manifest.read(tmp_path) == doc
    assert manifest.stale(tmp_path, {"stages": {"finetune": {"file": "gone.json", "bytes": 1, "mtime_ns": 1}}}) == ["gone.json"]


def test_usage_errors_and_missing_files(tmp_path, clean):
    r = invoke("data", "verify", "--data", tmp_path / "nowhere")
    assert r.exit_code == 2 and "no such directory" in r.output
    assert invoke("data", "verify", "--data", clean.root, "--jobs", "-1").exit_code == 2
    r = invoke("data", "verify", "--data", clean.root, "--config", "no-such-config")
    assert r.exit_code == 2 and "no config 'no-such-config'" in r.output
    (clean.root / datagen.FINETUNE_JSON).unlink()
    (clean.root / datagen.PRETRAIN_JSON).write_text('[{"id": 1,')
    r = invoke("data", "verify", "--data", clean.root)
    assert r.exit_code == 1
    t = text(r)
    assert f"FAIL finetune records: missing: {clean.root / datagen.FINETUNE_JSON}" in t
    assert "--only finetune-json" in t
    assert f"FAIL pretrain records: {clean.root / datagen.PRETRAIN_JSON}: not a record file" in t


# ---------------------------------------------------------------- reading record files: streamed, with progress

JSON_CASES = [
    "[]", " [ ] \n", "[1]", '[12345, 6.5e3, -0.25E-2, true, false, null, "a\\"b", {"x": [1, {"y": "z"}]}]',
    '[{"id": "\u00e9\u4e2d\U0001f600"}]', "[NaN, Infinity, -Infinity]", "[\n {\"a\": 1},\n {\"b\": 2}\n]\n",
    # not record files: json's own reason and place, whatever the window
    "", "[1,2", "[1 2]", "[1]x", '{"a": 1}', '"x"', "[{\"id\": \"a\"},]", "[\n {\"a\": 1},\n {\"b\": tru}\n]", "[1e",
    "[-]", '[{"id": "unterminated}]',
]


@pytest.mark.parametrize("chunk", [1, 2, 3, 7, 64, 1 << 20])
def test_records_are_streamed_as_json_load_reads_them(chunk, monkeypatch):
    """The streamed reader yields what json.loads returns, and fails where and as it does, whatever the window
    (a number or a string cut by a chunk boundary is read on, not taken as it stands)."""
    import io

    monkeypatch.setattr(verify_mod, "READ_CHUNK", chunk)
    for doc in JSON_CASES:
        try:
            whole = json.loads(doc)
            want = ("ok", whole) if isinstance(whole, list) else \
                ("error", f"expected a JSON list of records, got {type(whole).__name__}")
        except json.JSONDecodeError as e:
            want = ("error", str(e))
        try:
            got = ("ok", list(verify_mod.iter_records(io.BytesIO(doc.encode()))))
        except ValueError as e:
            got = ("error", str(e))
        assert repr(got) == repr(want), (doc, chunk)


def test_reading_a_large_record_file_is_never_silent(tmp_path, monkeypatch):
    """The record files are read in chunks, hashed, parsed and validated as they come, with progress lines off a
    terminal: every 10% (here from the start, and in chunks of 64 KB so that a small file has many) and the end."""
    from kit.data import progress as progress_mod

    monkeypatch.setattr(verify_mod, "READ_CHUNK", 64 << 10)
    monkeypatch.setattr(progress_mod, "PLAIN_QUIET_S", 0.0)
    monkeypatch.setattr(verify_mod, "PROGRESS_EVERY_S", 0.0)
    p = datagen.make(tmp_path / "data", faults=False, mmmu=False)
    image = p.finetune[0]["image"]
    recs = [{"id": f"r{i}", "image": image, "conversations": [{"from": "human", "value": f"<image>\nQuestion {i}?"},
                                                            {"from": "gpt", "value": "An answer. " * 20}]}
            for i in range(6000)]  # fmt: skip
    path = p.root / datagen.FINETUNE_JSON
    path.write_text(json.dumps(recs))
    r = invoke("data", "verify", "--data", p.root)
    assert r.exit_code == 0, r.output
    lines = [ln for ln in r.stderr.splitlines() if ln.startswith("reading the finetune records (llava_v1_5_mix665k.json): ")]
    assert len(lines) >= 10, r.stderr  # 10% steps
    middle = [ln for ln in lines if re.search(r" \((?:[2-8]\d)%\), [\d,]+ records, .* ETA \d+ s$", ln)]
    assert middle, lines
    size = progress_mod.human_bytes(path.stat().st_size)
    assert lines[-1].startswith(f"reading the finetune records (llava_v1_5_mix665k.json): {size} of {size} (100%), "
                                "6,000 records, "), lines[-1]
    m = manifest.read(p.root)
    assert m["stages"]["finetune"]["records"] == 6000 and m["stages"]["finetune"]["sha256"] == sha(path)
    assert "decoding images: " in r.stderr and "finding the images changed since the last verify: " in r.stderr


def test_a_filtered_file_is_written_as_json_dumps_writes_it(tmp_path):
    """Streamed record by record, the filtered file has the bytes of json.dumps(kept, ensure_ascii=False,
    indent=1) and a newline: non-ASCII text, nested values, the first and the last record dropped."""
    from kit.data import fix as fix_mod

    recs = [{"id": i, "image": f"x/{i}.jpg", "conversations": [{"from": "human", "value": f"é中 {i}\n<image>"}],
             "meta": {"n": [1, 2.5, None, True], "e": {}}} for i in range(7)]  # fmt: skip
    (tmp_path / "r.json").write_text(json.dumps(recs))
    dropped = [{"index": i, "id": i, "reason": "schema", "detail": "x"} for i in (0, 3, 6)]
    out = fix_mod.write_filtered(tmp_path, "r.json", dropped)
    body = (tmp_path / "r.filtered.json").read_bytes()
    kept = [r for i, r in enumerate(recs) if i not in (0, 3, 6)]
    assert body == json.dumps(kept, ensure_ascii=False, indent=1).encode() + b"\n"
    assert out["records"] == 4 and out["dropped"] == 3
    side = json.loads((tmp_path / "r.filtered.json.kit-filter.json").read_text())
    assert side["source"]["sha256"] == sha(tmp_path / "r.json") and side["output"]["sha256"] == sha(tmp_path / "r.filtered.json")
    everything = fix_mod.write_filtered(tmp_path, "r.json", [{"index": i, "id": i, "reason": "schema", "detail": "x"}
                                                             for i in range(7)])  # fmt: skip
    assert everything["records"] == 0 and (tmp_path / "r.filtered.json").read_bytes() == b"[]\n"
    assert not list(tmp_path.glob(".*.tmp"))
