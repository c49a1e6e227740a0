"""Decoder directories (issue #20): ``graphopt.save(decoder, DIR)`` / ``graphopt.load(DIR)``
(graphopt/decoding/directory.py) and the ``graphopt trace-decoder`` / ``graphopt generate``
commands.

A saved and loaded decoder must generate the very tokens the decoder generated before saving
(greedy and sampled, a left-padded batch, float and int4 weights, GPT-2 and Llama-style); every
way the manifest's decoder section can be wrong is refused with an ``ArtifactError`` naming the
manifest and the field; a decoder directory is never read as a bare graph. Tiny models are
traced once per module (tracing takes seconds); the CLI traces its own directory once.
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

import graphopt
from graphopt.artifact import MANIFEST, load_model_dir, read_manifest
from graphopt.cli import main
from graphopt.decoding import DecoderGraph
from graphopt.decoding.directory import load_decoder, save_decoder
from graphopt.errors import ArtifactError, GenerationError

pytest.importorskip("transformers")

MAX_LENGTH = 48  # tests/conftest.py: TINY_DECODER_LENGTH
ARCHS = ("gpt2", "llama")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def decoders(tiny_decoders):
    """arch -> optimized DecoderGraph of a tiny model (a larger init: varied continuations),
    traced once per session (tests/conftest.py)."""
    return {arch: t.optimized for arch, t in tiny_decoders.items()}


@pytest.fixture(scope="module")
def saved(decoders, tmp_path_factory):
    """arch -> a decoder directory of ``decoders[arch]``, saved once."""
    root = tmp_path_factory.mktemp("decoders")
    for arch, decoder in decoders.items():
        graphopt.save(decoder, root / arch, pipeline="default")
    return {arch: root / arch for arch in ARCHS}


def left_padded_prompts():
    ids = torch.randint(0, 1000, (2, 7), generator=torch.Generator().manual_seed(0))
    mask = torch.ones_like(ids)
    mask[1, :3] = 0
    return ids.masked_fill(mask == 0, 0), mask


def generations(decoder: DecoderGraph) -> list[torch.Tensor]:
    """Greedy and sampled continuations of a left-padded batch on the native backend."""
    compiled = decoder.compile(backend="native", threads=2)
    ids, mask = left_padded_prompts()
    greedy = graphopt.generate(compiled, ids, 16, attention_mask=mask, eos_token_id=[])
    sampled = graphopt.generate(compiled, ids, 16, attention_mask=mask, eos_token_id=[],
                                do_sample=True, top_k=20, top_p=0.9, temperature=0.8, seed=3)
    return [greedy, sampled]


def assert_same_decoder(loaded, decoder: DecoderGraph) -> None:
    assert isinstance(loaded, DecoderGraph)
    for field in ("max_length", "cache_heads", "cache_dtype", "vocab_size", "eos_token_ids",
                  "pad_token_id", "model_name"):
        assert getattr(loaded, field) == getattr(decoder, field), field
    assert str(loaded.graph) == str(decoder.graph)


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("arch", ARCHS)
def test_a_loaded_decoder_generates_the_same_tokens(decoders, saved, arch):
    decoder = decoders[arch]
    loaded = graphopt.load(saved[arch])
    assert_same_decoder(loaded, decoder)
    assert isinstance(loaded.cache_heads[0][0], int) and isinstance(loaded.cache_heads, tuple)
    before, after = generations(decoder), generations(loaded)
    assert len(set(before[0][0, 7:].tolist())) > 3, "degenerate continuation: test is vacuous"
    for expected, got in zip(before, after):
        assert torch.equal(got, expected)


def test_the_manifest_holds_the_decoder_section(decoders, saved):
    manifest = read_manifest(saved["llama"])
    decoder = decoders["llama"]
    assert manifest["version"] == [1, 1] and manifest["pipeline"] == "default"
    assert manifest["decoder"] == {
        "max_length": MAX_LENGTH, "cache_heads": [[2, 32], [2, 32]], "cache_dtype": "float32",
        "vocab_size": 1000, "eos_token_ids": list(decoder.eos_token_ids),
        "pad_token_id": decoder.pad_token_id, "model_name": "LlamaForCausalLM"}
    assert len(manifest["inputs"]) == 3 + 2 * decoder.num_layers


def test_a_quantized_decoder_round_trips(decoders, tmp_path):
    decoder = decoders["gpt2"]
    int4 = decoder.with_graph(graphopt.quantize(decoder.graph, "weight-only", bits=4))
    assert int4.graph.op_histogram()["linear_weight_only"] > 0
    graphopt.save(int4, tmp_path / "int4")
    loaded = graphopt.load(tmp_path / "int4")
    assert_same_decoder(loaded, int4)
    assert loaded.weight_bytes() < decoder.weight_bytes() / 2
    for expected, got in zip(generations(int4), generations(loaded)):
        assert torch.equal(got, expected)
    # a compiled decoder saves its decoder; load_decoder insists on a decoder directory
    graphopt.save(int4.compile(backend="native", threads=1), tmp_path / "compiled")
    assert_same_decoder(load_decoder(tmp_path / "compiled"), int4)


def test_a_decoder_directory_is_never_read_as_a_bare_graph(saved, tmp_path, capsys):
    with pytest.raises(ArtifactError, match="a decoder directory.*graphopt.load"):
        load_model_dir(saved["gpt2"])
    # every MODEL reader but `show` (which describes the decoder) goes through load_model_dir
    code = main(["optimize", str(saved["gpt2"]), "-o", str(tmp_path / "out.graphopt")])
    err = capsys.readouterr().err
    assert code == 2 and "decoder directory" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "out.graphopt").exists()
    # and the other way round: a plain model directory is no decoder
    graph = graphopt.trace(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),))
    graphopt.save(graph, tmp_path / "plain")
    assert isinstance(graphopt.load(tmp_path / "plain"), graphopt.Graph)
    with pytest.raises(ArtifactError, match="not a decoder directory"):
        load_decoder(tmp_path / "plain")


def test_saving_refuses_what_loading_would_refuse(decoders, tmp_path):
    decoder = decoders["gpt2"]
    bad = [(dataclasses.replace(decoder, pad_token_id=-1), "pad_token_id"),
           (dataclasses.replace(decoder, eos_token_ids=(1000,)), "eos_token_ids"),
           (dataclasses.replace(decoder, cache_dtype=torch.int8), "cannot be saved"),
           (dataclasses.replace(decoder, max_length=16), "max_length"),
           (dataclasses.replace(decoder, model_name="a\nb"), "model_name"),
           (decoder.graph, "DecoderGraph")]
    for index, (wrong, match) in enumerate(bad):
        with pytest.raises(GenerationError, match=match):
            save_decoder(wrong, tmp_path / f"d{index}")
        assert not (tmp_path / f"d{index}").exists()  # checked before anything is written


# --------------------------------------------------------------------- corrupted manifests
def _remove(section, key):
    del section[key]


EDITS = [
    ("max_length", 33, r"input %past_0 .*cache_heads\[0\], max_length"),
    ("max_length", True, r"decoder\.max_length must be an int"),
    ("max_length", 1.5, r"decoder\.max_length must be an int"),
    ("max_length", 1 << 30, r"decoder\.max_length must be an int from 2 to 1048576"),
    ("cache_heads", [[4, 32]], r"lists 1 layer, so the step graph takes 5 inputs"),
    ("cache_heads", [[4, 32], [8, 16]], r"input %past_2 .*cache_heads\[1\]"),
    ("cache_heads", [[0, 32], [4, 32]], r"decoder\.cache_heads must list"),
    ("cache_heads", [[4, 32, 1], [4, 32]], r"decoder\.cache_heads must list"),
    ("cache_heads", "4x32", r"decoder\.cache_heads must list"),
    ("cache_dtype", "float16", r"input %past_0 .* f16"),
    ("cache_dtype", "torch.float32", r"decoder\.cache_dtype must be one of float32"),
    ("cache_dtype", "int8", r"decoder\.cache_dtype must be one of"),
    ("vocab_size", 2000, r"decoder\.vocab_size says the logits are \[batch, 2000\]"),
    ("vocab_size", 1 << 40, r"decoder\.vocab_size must be an int"),
    ("vocab_size", 500, r"decoder\.eos_token_ids .* inside the vocabulary \[0, 500\)"),
    ("eos_token_ids", [1000], r"decoder\.eos_token_ids must be a list"),
    ("eos_token_ids", [-1], r"decoder\.eos_token_ids must be a list"),
    ("eos_token_ids", [True], r"decoder\.eos_token_ids must be a list"),
    ("eos_token_ids", 999, r"decoder\.eos_token_ids must be a list"),
    ("eos_token_ids", list(range(300)), r"at most 256 token ids"),
    ("pad_token_id", 1000, r"decoder\.pad_token_id must be null or a token id"),
    ("pad_token_id", "0", r"decoder\.pad_token_id must be null"),
    ("model_name", "", r"decoder\.model_name must be printable"),
    ("model_name", "x\x1b[2J", r"decoder\.model_name must be printable"),
    ("model_name", "x" * 201, r"decoder\.model_name must be printable text of 1 to 200"),
    ("model_name", 7, r"decoder\.model_name must be printable"),
    ("layout", "bshd", r"exactly the fields .*unknown \['layout'\]"),
    ("max_length", _remove, r"exactly the fields .*missing \['max_length'\]"),
]


def _edit_copy(source, tmp_path, edit) -> str:
    folder = str(tmp_path / "edited")
    shutil.copytree(source, folder)
    with open(os.path.join(folder, MANIFEST)) as f:
        manifest = json.load(f)
    edit(manifest)
    with open(os.path.join(folder, MANIFEST), "w") as f:
        json.dump(manifest, f)
    return folder


@pytest.mark.parametrize("field, value, match", EDITS,
                         ids=[f"{field}-{index}" for index, (field, _, _) in enumerate(EDITS)])
def test_an_edited_decoder_section_is_refused(saved, tmp_path, field, value, match):
    def edit(manifest):
        if callable(value):
            value(manifest["decoder"], field)
        else:
            manifest["decoder"][field] = value

    folder = _edit_copy(saved["gpt2"], tmp_path, edit)
    with pytest.raises(ArtifactError, match=match) as caught:
        graphopt.load(folder)
    message = str(caught.value)
    assert message.startswith(os.path.join(folder, MANIFEST))  # names the file
    assert "re-create the directory" in message  # says what to do
    assert len(message) < 700  # a hostile value is shortened, not echoed whole


@pytest.mark.parametrize("section, match", [([], "must be an object"), (None, "must be an "
                                            "object"), ({"a": [[[[[[1]]]]]]}, "must be an object")])
def test_a_decoder_section_that_is_no_object_is_refused(saved, tmp_path, section, match):
    folder = _edit_copy(saved["gpt2"], tmp_path, lambda m: m.__setitem__("decoder", section))
    with pytest.raises(ArtifactError, match=match):
        graphopt.load(folder)
    with pytest.raises(ArtifactError):
        load_decoder(folder)


# ---------------------------------------------------------------------------- command line
@pytest.fixture(scope="module")
def cli_dir(tmp_path_factory):
    """A decoder directory that `graphopt trace-decoder` wrote (int4 weights), and its
    DecoderGraph."""
    folder = tmp_path_factory.mktemp("cli") / "gpt2"
    assert main(["trace-decoder", "gpt2-tiny?initializer_range=0.1", "-o", str(folder),
                 "--max-length", "24", "--quantize", "weight-only", "-q"]) == 0
    decoder = graphopt.load(folder)
    assert decoder.graph.op_histogram()["linear_weight_only"] > 0
    return str(folder), decoder


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def expected_tokens(decoder, prompts, new, **options) -> list[list[int]]:
    """What the API generates for ``prompts`` (left-padded as the CLI pads them)."""
    longest = max(len(p) for p in prompts)
    ids = torch.tensor([[decoder.pad_token_id] * (longest - len(p)) + p for p in prompts])
    mask = torch.tensor([[0] * (longest - len(p)) + [1] * len(p) for p in prompts])
    out = graphopt.generate(decoder.compile(backend="native", threads=1), ids, new,
                            attention_mask=mask, **options)
    return out[:, longest:].tolist()


def test_cli_generate_prints_what_the_api_generates(cli_dir, capsys, tmp_path):
    folder, decoder = cli_dir
    prompts = [[1, 2, 3], [4, 5]]
    expected = expected_tokens(decoder, prompts, 8, eos_token_id=[])
    code, out, err = run_cli(capsys, "generate", folder, "--input-ids", "1,2,3",
                             "--input-ids", "4, 5", "--max-new-tokens", "8", "--no-stop")
    assert code == 0, err
    assert [[int(t) for t in line.split(",")] for line in out.splitlines()] == expected
    assert "prefill" in err and "tokens/s" in err
    # the same prompts from a file, .json or .txt
    (tmp_path / "p.json").write_text(json.dumps(prompts))
    (tmp_path / "p.txt").write_text("1 2 3\n\n4,5\n")
    for name in ("p.json", "p.txt"):
        code, again, err = run_cli(capsys, "generate", folder, "--prompt-file",
                                   str(tmp_path / name), "--max-new-tokens", "8", "--no-stop",
                                   "-q")
        assert code == 0 and again == out and err == "", err


def test_cli_generate_json_and_stream(cli_dir, capsys):
    folder, decoder = cli_dir
    expected = expected_tokens(decoder, [[7, 8, 9]], 6, eos_token_id=[])
    code, out, err = run_cli(capsys, "generate", folder, "--input-ids", "7,8,9",
                             "--max-new-tokens", "6", "--no-stop", "--json", "-q")
    assert code == 0, err
    report = json.loads(out)
    assert report["sequences"] == [{"prompt": [7, 8, 9], "tokens": expected[0],
                                    "stopped": False}]
    assert report["steps"] == 6 and report["prefill_ms"] > 0
    assert report["decode_tokens_per_s"] > 0 and report["model"] == "GPT2LMHeadModel"
    code, out, _ = run_cli(capsys, "generate", folder, "--input-ids", "7,8,9",
                           "--max-new-tokens", "6", "--no-stop", "--stream", "-q")
    assert code == 0 and [int(line) for line in out.splitlines()] == expected[0]


def test_cli_generate_stop_tokens_sampling_and_backends(cli_dir, capsys):
    folder, decoder = cli_dir
    free = expected_tokens(decoder, [[1, 2, 3]], 8, eos_token_id=[])[0]
    stop = free[2]
    code, out, _ = run_cli(capsys, "generate", folder, "--input-ids", "1,2,3",
                           "--max-new-tokens", "8", "--stop-token", str(stop), "-q")
    assert code == 0 and out.strip() == ",".join(map(str, free[:free.index(stop) + 1]))
    sample = ("generate", folder, "--input-ids", "1,2,3", "--max-new-tokens", "8", "--no-stop",
              "--do-sample", "--top-k", "50", "--temperature", "1.5", "--seed", "7", "-q")
    code, first, _ = run_cli(capsys, *sample)
    code2, second, _ = run_cli(capsys, *sample)
    assert code == code2 == 0 and first == second  # seeded: reproducible
    api = expected_tokens(decoder, [[1, 2, 3]], 8, eos_token_id=[], do_sample=True, top_k=50,
                          temperature=1.5, seed=7)
    assert first.strip() == ",".join(map(str, api[0]))
    code, out, err = run_cli(capsys, "generate", folder, "--input-ids", "1,2,3",
                             "--max-new-tokens", "4", "--backend", "onnxruntime",
                             "--threads", "1", "-q")
    assert code == 0, err
    ids = torch.tensor([[1, 2, 3]])
    want = graphopt.generate(decoder.compile(backend="onnxruntime", threads=1), ids, 4)
    want = [t for t in want[0, 3:].tolist()]
    stops = set(decoder.eos_token_ids)
    cut = next((i + 1 for i, t in enumerate(want) if t in stops), len(want))
    assert out.strip() == ",".join(map(str, want[:cut]))  # the CLI trims after a stop token


@pytest.mark.parametrize("argv, fragment", [
    (["--input-ids", "1,5000"], "outside the model's vocabulary [0, 1000)"),
    (["--input-ids", "1,2,3", "--max-new-tokens", "30"],
     "exceed the decoder's cache of 24 tokens: give --max-new-tokens 21 or less"),
    (["--input-ids", ",".join(["1"] * 24)], "leaves no room for new tokens in the decoder's "
     "cache of 24 tokens: re-create the directory with `graphopt trace-decoder MODEL -o DIR "
     "--max-length 56`"),
    (["--input-ids", "1,x"], "'x' is not a token id"),
    (["--input-ids", "-1"], "is not a token id"),
    (["--input-ids", ","], "no token ids"),
    (["--input-ids", "1", "--top-k", "3"], "--top-k applies to sampling: add --do-sample"),
    (["--input-ids", "1", "--do-sample", "--top-p", "2"], "top_p=2.0"),
    (["--input-ids", "1", "--stop-token", "1000"], "--stop-token 1000: outside"),
    (["--input-ids", "1", "--max-new-tokens", "0"], "give at least 1"),
    (["--input-ids", "1", "--threads", "100000"], "threads"),
    (["--prompt-file", "prompts.csv"], "name it .json"),
    (["--prompt-file", "missing.json"], "missing.json"),
])
def test_cli_generate_errors_are_one_line(cli_dir, capsys, tmp_path, monkeypatch, argv,
                                          fragment):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "prompts.csv").write_text("1,2")
    code, _, err = run_cli(capsys, "generate", cli_dir[0], *argv)
    assert code == 2 and len(err.strip().splitlines()) == 1, err
    assert fragment in err and "Traceback" not in err


@pytest.mark.parametrize("content, fragment", [
    ("[1, 2.5]", "expected a list of token ids"), ("[[1], []]", "expected a list of token ids"),
    ("[true]", "expected a list of token ids"), ("{\"ids\": [1]}", "expected a list"),
    ("[" * 100000, "not valid JSON"), ("[]", "expected a list"),
])
def test_cli_generate_refuses_bad_prompt_files(cli_dir, capsys, tmp_path, content, fragment):
    (tmp_path / "p.json").write_text(content)
    code, _, err = run_cli(capsys, "generate", cli_dir[0], "--prompt-file",
                           str(tmp_path / "p.json"))
    assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, err


def test_cli_generate_refuses_what_is_not_a_decoder_directory(capsys, tmp_path):
    code, _, err = run_cli(capsys, "generate", str(tmp_path / "nothing"), "--input-ids", "1")
    assert code == 2 and "no such directory" in err
    graphopt.save(graphopt.trace(torch.nn.Linear(4, 2).eval(), (torch.randn(1, 4),)),
                  tmp_path / "plain")
    code, _, err = run_cli(capsys, "generate", str(tmp_path / "plain"), "--input-ids", "1")
    assert code == 2 and "not a decoder directory" in err
    assert len(err.strip().splitlines()) == 1


def test_cli_show_describes_a_decoder_directory(saved, capsys, tmp_path):
    """`graphopt show DIR` of a decoder directory: the decoder's line, then its step graph
    (IR, histogram, --pipeline as for any model); a damaged decoder section is the loader's
    one-line error."""
    code, out, err = run_cli(capsys, "show", str(saved["llama"]), "--no-ir")
    assert code == 0, err
    assert (f"decoder directory: LlamaForCausalLM, 2 layers, vocabulary 1000, max_length "
            f"{MAX_LENGTH}, key/value heads x dims 2 x 32, KV cache "
            f"{2 * 2 * 2 * MAX_LENGTH * 32 * 4 / 2**20:.2f} MiB per sequence") in out
    assert "graph LlamaForCausalLM_step(%input_ids" in out
    histogram = out.split("== op histogram")[1]
    assert re.search(r"^\s+attention\s+2$", histogram, re.M), histogram
    code, out, err = run_cli(capsys, "show", str(saved["gpt2"]), "--no-ir", "--pipeline",
                             "default")
    assert code == 0 and "== pass report" in out, err
    folder = _edit_copy(saved["gpt2"], tmp_path,
                        lambda m: m["decoder"].__setitem__("max_length", True))
    code, _, err = run_cli(capsys, "show", folder)
    assert code == 2 and "decoder.max_length must be an int" in err
    assert len(err.strip().splitlines()) == 1, err


def test_cli_trace_decoder_refuses_bad_requests_before_tracing(capsys, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    for argv, fragment in [
            (["gpt3-huge", "-o", str(tmp_path / "d")], "expected a built-in causal LM"),
            (["gpt2-tiny?layers=3", "-o", str(tmp_path / "d")], "unknown options"),
            (["gpt2-tiny?seed=x", "-o", str(tmp_path / "d")], "seed must be an int"),
            (["gpt2-tiny", "-o", str(tmp_path / "busy")], "not an empty folder"),
            (["gpt2-tiny", "-o", str(tmp_path / "d"), "--bits", "8"], "apply to --quantize"),
            (["gpt2-tiny", "-o", str(tmp_path / "d"), "--max-length", "1"], "at least 2"),
            (["gpt2-tiny", "-o", str(tmp_path / "d"), "--pipeline", "no-such-pass"],
             "no-such-pass"),
            (["no_such_module_xyz:make", "-o", str(tmp_path / "d")], "cannot import")]:
        code, _, err = run_cli(capsys, "trace-decoder", *argv)
        assert code == 2 and fragment in err and len(err.strip().splitlines()) == 1, (argv, err)
    assert not (tmp_path / "d").exists()


FACTORY = """
import torch
import transformers

def make(width=16):
    torch.manual_seed(0)
    config = transformers.GPT2Config(n_layer=1, n_embd=width, n_head=2, vocab_size=64,
                                     n_positions=64, eos_token_id=63)
    return transformers.GPT2LMHeadModel(config)
"""


def test_cli_trace_decoder_takes_a_factory(capsys, tmp_path):
    (tmp_path / "mylm.py").write_text(FACTORY)
    out_dir = str(tmp_path / "mylm")
    code, out, err = run_cli(capsys, "trace-decoder", f"{tmp_path / 'mylm.py'}:make?width=32",
                             "-o", out_dir, "--max-length", "12", "--pipeline", "none")
    assert code == 0, err
    assert "GPT2LMHeadModel, 1 layer, vocabulary 64, max_length 12" in out
    assert "traced GPT2LMHeadModel" in err and "[transformers]" not in err
    decoder = graphopt.load(out_dir)
    assert decoder.cache_heads == ((2, 16),) and decoder.eos_token_ids == (63,)
    code, out, err = run_cli(capsys, "generate", out_dir, "--input-ids", "1,2", "-q")
    assert code == 0 and 1 <= len(out.strip().split(",")) <= 10, err  # fills the cache


def test_cli_errors_in_a_real_process_show_no_traceback(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "graphopt.cli", "generate",
                           str(tmp_path / "missing"), "--input-ids", "1,2"],
                          cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2
    assert proc.stderr.strip().startswith("graphopt: error:") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
