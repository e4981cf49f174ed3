"""The `xlmrxl` command line, through main([...]) with captured output: fill-mask (argument and stdin), embed, info
(plain, int4 byte report), quantize, usage errors, logging."""

import io
import json
import re
import struct
import subprocess
import sys

import pytest
import torch
from test_pipelines import make_checkpoint

import xlmrxl
from xlmrxl.cli import checkpoint_info, main
from xlmrxl_kernels import logs


@pytest.fixture(scope="module")
def ckpt(spm_dir, tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("cli_mlm"), spm_dir)


def test_fill_mask_from_argument(ckpt, capsys):
    assert main(["fill-mask", "Hello <mask>!", "--model", str(ckpt), "--top-k", "3", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "Hello <mask>!" and len(out) == 4, out
    want = xlmrxl.pipeline("fill-mask", model=str(ckpt), top_k=3, device="cpu")("Hello <mask>!")
    assert out[1].split()[0] == f"{want[0]['score']:.4f}" and want[0]["sequence"] in out[1]


def test_fill_mask_from_stdin_json(ckpt, capsys, monkeypatch):
    monkeypatch.setattr(sys, "stdin", io.StringIO("Hello <mask>!\n\nx <mask>. y <mask>\n"))
    assert main(["fill-mask", "--model", str(ckpt), "--top-k", "2", "--json"]) == 0
    lines = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [x["input"] for x in lines] == ["Hello <mask>!", "x <mask>. y <mask>"]
    assert len(lines[0]["predictions"]) == 2 and set(lines[0]["predictions"][0]) == {
        "score",
        "token",
        "token_str",
        "sequence",
    }
    assert len(lines[1]["predictions"]) == 2 and len(lines[1]["predictions"][0]) == 2  # two masks


def test_fill_mask_error_and_verbose_logging(ckpt, capsys):
    assert main(["fill-mask", "no mask", "--model", str(ckpt)]) == 1
    err = capsys.readouterr().err
    assert "no <mask> token" in err and "Traceback" not in err
    logs.forget()  # fallback reasons are logged once per process
    assert main(["-v", "fill-mask", "a <mask>", "--model", str(ckpt), "--backend", "auto", "--device", "cpu"]) == 0
    assert "PyTorch reference" in capsys.readouterr().err


def test_embed(ckpt, capsys, monkeypatch):
    h = xlmrxl.XLMRobertaXLConfig.from_pretrained(str(ckpt)).hidden_size
    assert main(["embed", "Hello world", "--model", str(ckpt), "--pooling", "mean", "--device", "cpu"]) == 0
    vec = json.loads(capsys.readouterr().out)
    want = xlmrxl.pipeline("feature-extraction", model=str(ckpt), pooling="mean", device="cpu")("Hello world")
    assert len(vec) == h
    err = max(abs(a - b) for a, b in zip(vec, want.tolist()))
    assert err < 1e-5, f"embed output vs pipeline: max error {err:.3e}"
    monkeypatch.setattr(sys, "stdin", io.StringIO("one\ntwo three\n"))
    assert main(["embed", "-", "--model", str(ckpt), "--pooling", "none", "--json", "--normalize"]) == 0
    rows = [json.loads(x) for x in capsys.readouterr().out.splitlines()]
    assert [r["input"] for r in rows] == ["one", "two three"]
    assert rows[0]["shape"][1] == h and len(rows[0]["embedding"]) == rows[0]["shape"][0]


def test_info(ckpt, capsys):
    model = xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(ckpt))
    n_params = model.num_parameters()
    assert main(["info", str(ckpt)]) == 0
    out = capsys.readouterr().out
    assert f"{n_params:,}" in out and "quantized    no" in out and "heads of 16" in out
    assert main(["info", str(ckpt), "--json"]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["parameters"] == n_params
    assert info["bytes_in_memory"] == sum(p.numel() * p.element_size() for p in model.parameters())
    assert info["quantized"] is False and info["tokenizer"] is True
    assert main(["info", str(ckpt / "missing")]) == 1
    assert "not a directory" in capsys.readouterr().err


def _write_safetensors(path, tensors):
    header, blobs, offset = {}, [], 0
    names = {torch.uint8: "U8", torch.bfloat16: "BF16", torch.float32: "F32", torch.int32: "I32"}
    for k, t in tensors.items():
        b = t.contiguous().view(torch.uint8).numpy().tobytes()
        header[k] = {"dtype": names[t.dtype], "shape": list(t.shape), "data_offsets": [offset, offset + len(b)]}
        blobs.append(b)
        offset += len(b)
    raw = json.dumps(header).encode()
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(raw)) + raw + b"".join(blobs))


def test_info_int4_byte_report(tmp_path, capsys):
    """An int4 checkpoint as the quantization helper writes it (qweight/scales/zeros + quantization_config):
    info reports the quantized linear bytes against their bf16 size, from the headers alone."""
    out_f, in_f, g = 256, 512, 128
    tensors = {
        "roberta.embeddings.word_embeddings.weight": torch.randn(1024, in_f).bfloat16(),
        "roberta.encoder.layer.0.intermediate.dense.qweight": torch.randint(
            0, 255, (out_f, in_f // 2), dtype=torch.uint8
        ),
        "roberta.encoder.layer.0.intermediate.dense.scales": torch.rand(out_f, in_f // g).bfloat16(),
        "roberta.encoder.layer.0.intermediate.dense.zeros": torch.rand(out_f, in_f // g).bfloat16(),
        "roberta.encoder.layer.0.intermediate.dense.bias": torch.rand(out_f).bfloat16(),
    }
    _write_safetensors(tmp_path / "model.safetensors", tensors)
    cfg = {
        "model_type": "xlm-roberta-xl",
        "architectures": ["XLMRobertaXLForMaskedLM"],
        "hidden_size": in_f,
        "num_attention_heads": 4,
        "num_hidden_layers": 1,
        "intermediate_size": out_f,
        "vocab_size": 1024,
        "torch_dtype": "bfloat16",
        "quantization_config": {"quant_method": "xlmrxl_int4", "bits": 4, "group_size": g},
    }
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    info = checkpoint_info(tmp_path)
    q_bytes = out_f * in_f // 2 + 2 * 2 * out_f * in_f // g
    assert info["quantized"] is True and info["quantized_linear_layers"] == 1
    assert info["quantized_linear_bytes"] == q_bytes
    assert info["quantized_linear_bf16_bytes"] == 2 * out_f * in_f
    assert info["parameters"] == 1024 * in_f + out_f * in_f + out_f
    assert main(["info", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "int4 linears 1 layers" in out and f"{100 * q_bytes / (2 * out_f * in_f):.1f}%" in out


@pytest.mark.parametrize(
    "damage,match",
    [
        ("truncate", r"truncated or corrupted: its header describes \d+ bytes but the file has only"),
        ("dtype", r"not a valid safetensors file .*unknown variant `F99`"),
        ("offsets", r"truncated or corrupted: its header describes \d+ bytes"),
        ("length", r"header length field says 18446744073709551615 bytes"),
        ("config", r"config field hidden_size=-64"),
    ],
)
def test_info_refuses_a_corrupt_checkpoint(ckpt, tmp_path, capsys, damage, match):
    """info validates with the loader's reader: a corrupt checkpoint is exit 1 with a message, never a summary."""
    import shutil

    d = tmp_path / "bad"
    shutil.copytree(ckpt, d)
    path = d / "model.safetensors"
    size = path.stat().st_size
    n = struct.unpack("<Q", path.read_bytes()[:8])[0]
    header = json.loads(path.read_bytes()[8 : 8 + n])
    if damage == "truncate":
        with open(path, "r+b") as fh:
            fh.truncate(size - 100)
    elif damage in ("dtype", "offsets"):
        key = max((k for k in header if k != "__metadata__"), key=lambda k: header[k]["data_offsets"][1])
        if damage == "dtype":
            header[key]["dtype"] = "F99"
        else:
            header[key]["data_offsets"][1] += 10**6
        raw = json.dumps(header).encode()
        raw += b" " * (n - len(raw)) if len(raw) <= n else b""
        data = path.read_bytes()[8 + n :]
        path.write_bytes(struct.pack("<Q", len(raw)) + raw + data)
    elif damage == "length":
        with open(path, "r+b") as fh:
            fh.write(struct.pack("<Q", 2**64 - 1))
    else:
        cfg = json.loads((d / "config.json").read_text())
        (d / "config.json").write_text(json.dumps(dict(cfg, hidden_size=-64)))
    assert main(["info", str(d)]) == 1
    err = capsys.readouterr().err
    assert re.search(match, err), err
    assert "Traceback" not in err


def test_quantize_refuses_a_directory_that_is_not_a_checkpoint(ckpt, tmp_path, capsys):
    dst = tmp_path / "mine"
    dst.mkdir()
    (dst / "config.json").write_text('{"my": "own file"}')
    (dst / "notes.txt").write_text("keep")
    assert main(["quantize", str(ckpt), str(dst), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert "not a checkpoint" in err and "--force" in err, err
    assert (dst / "config.json").read_text() == '{"my": "own file"}' and sorted(p.name for p in dst.iterdir()) == [
        "config.json",
        "notes.txt",
    ]


def test_quantize(spm_dir, tmp_path, capsys):
    try:
        from xlmrxl.quantization import load_hook  # noqa: F401
    except ImportError:
        pytest.skip("xlmrxl.quantization (the int4 helper's part) has not landed yet")
    src = make_checkpoint(
        tmp_path / "src", spm_dir, hidden_size=256, num_attention_heads=4, intermediate_size=512
    )  # K a multiple of the group size
    dst = tmp_path / "int4"
    assert main(["quantize", str(src), str(dst), "--group-size", "128", "--dtype", "float32", "--device", "cpu"]) == 0
    out = capsys.readouterr().out
    assert "int4" in out and "quantized    yes" in out
    info = checkpoint_info(dst)
    assert info["quantized"] and info["quantized_linear_layers"] == 3 * 6  # q, k, v, o, intermediate, output
    ratio = info["quantized_linear_bytes"] / info["quantized_linear_bf16_bytes"]
    assert ratio <= 0.30, f"int4 linears take {ratio:.1%} of their bf16 bytes"
    assert (dst / "sentencepiece.bpe.model").is_file()
    # the header-only numbers equal the int4 helper's own report on the loaded model
    from xlmrxl.quantization import quantized_bytes_report

    report = quantized_bytes_report(xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(dst)))
    assert info["parameters"] == xlmrxl.XLMRobertaXLForMaskedLM.from_pretrained(str(src)).num_parameters()
    for key in ("quantized_linear_layers", "quantized_linear_bytes", "quantized_linear_bf16_bytes"):
        assert info[key] == report[key], key
    assert main(["fill-mask", "Hello <mask>!", "--model", str(dst), "--top-k", "2", "--device", "cpu"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 3
    # a group size other than 128 goes through the dict form of quantization=
    assert (
        main(
            ["quantize", str(src), str(tmp_path / "g64"), "--group-size", "64", "--dtype", "float32", "--device", "cpu"]
        )
        == 0
    )
    assert checkpoint_info(tmp_path / "g64")["quantization_config"]["group_size"] == 64
    # --force: a directory of the user's own files; theirs stay, the checkpoint is written beside them
    forced = tmp_path / "forced"
    forced.mkdir()
    (forced / "notes.txt").write_text("keep")
    argv = ["quantize", str(src), str(forced), "--dtype", "float32", "--device", "cpu"]
    assert main(argv) == 1 and main(argv + ["--force"]) == 0
    assert (forced / "notes.txt").read_text() == "keep" and checkpoint_info(forced)["quantized"]
    assert main(argv) == 0, "a checkpoint directory is overwritten without --force"


def test_usage_errors(capsys):
    assert main([]) == 2
    assert main(["fill-mask", "x <mask>"]) == 2  # --model is required
    assert "--model" in capsys.readouterr().err
    assert main(["--help"]) == 0
    assert main(["--version"]) == 0
    assert xlmrxl.__version__ in capsys.readouterr().out


def test_python_dash_m(ckpt):
    r = subprocess.run([sys.executable, "-m", "xlmrxl", "info", str(ckpt)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "parameters" in r.stdout
