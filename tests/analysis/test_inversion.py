"""``verl-repro inversion`` on the tiny checkpoint: its summary against a direct computation."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from scipy import stats

from verl_repro.cli import main

MIN_TOKENS = 5
STEPS = [
    "First, we add 12 and 30 to get 42.\n",
    "Wait, let me re-check the sum.\n\n",
    "Then we multiply by 2, which gives 84.\n",
    "So the total is 42.\n",
    "Is 12 larger than 30?\n",
]


def _rows():
    """Prompts + responses with ground truth: even rows answer right (42), odd rows wrong (41)."""
    rows = []
    for i in range(6):
        body = "".join(STEPS[(i + k) % len(STEPS)] for k in range(2 + i % 3))
        answer = 42 if i % 2 == 0 else 41
        rows.append(
            {
                "prompt": "<|im_start|>user\nWhat is 12 plus 30?<|im_end|>\n<|im_start|>assistant\n<think>\n",
                "response": f"{body}</think>\n\nThe answer is \\boxed{{{answer}}}.<|im_end|>",
                "ground_truth": "42",
            }
        )
    rows.append({"prompt": "<|im_start|>user\nHi<|im_end|>\n", "response": "Ok.", "ground_truth": "1"})  # too short
    return rows


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def _direct(model_dir, rows, temperature=1.0):
    """Oracle: plain float64 HF forward and softmax maths, thinking tokens only.

    The random tiny model is nearly uniform (every entropy within ~0.01 of log V), so ranks hinge
    on the 6th digit: both sides run the model in float64 and round H and g to float32 (the
    precision the CLI reports), which makes the ranks agree.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float64).eval()
    think_end = tokenizer.convert_tokens_to_ids("</think>")
    out = []
    for row in rows:
        prompt = tokenizer(row["prompt"], add_special_tokens=False)["input_ids"]
        response = tokenizer(row["response"], add_special_tokens=False)["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([prompt + response])).logits[0, len(prompt) - 1 : -1].double()
        p = torch.softmax(logits / temperature, dim=-1)
        entropy = -(p * torch.log(p)).sum(-1)
        onehot = torch.nn.functional.one_hot(torch.tensor(response), p.shape[-1]).double()
        grad_norm = (p - onehot).norm(dim=-1)
        n = response.index(think_end) if think_end in response else len(response)
        entropy, grad_norm = entropy.float().double(), grad_norm.float().double()
        out.append({"prompt": prompt, "response": response, "entropy": entropy[:n], "grad_norm": grad_norm[:n], "ids": response[:n]})
    return out


def _expected_rho(entropy, grad_norm, fn):
    if len(entropy) < MIN_TOKENS:
        return None
    return float(fn(entropy.numpy(), grad_norm.numpy())[0])


@pytest.fixture(scope="module")
def inversion_run(tiny_model_dir, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("inversion")
    data = _write_jsonl(tmp / "rollouts.jsonl", _rows())
    out = tmp / "out"
    code = main([
        "inversion", "--model", str(tiny_model_dir), "--data", str(data), "--output-dir", str(out),
        "--min-tokens", str(MIN_TOKENS), "--fingerprint-tokens", "6", "--dtype", "float64", "--no-progress",
    ])
    assert code == 0
    return json.loads((out / "summary.json").read_text()), out


def test_summary_matches_a_direct_computation(inversion_run, tiny_model_dir):
    summary, _ = inversion_run
    direct = _direct(tiny_model_dir, _rows())
    assert summary["counts"]["responses"] == len(direct)
    assert summary["counts"]["scope_tokens"] == sum(len(d["ids"]) for d in direct)
    for got, want in zip(summary["responses"], direct):
        assert got["scope_tokens"] == len(want["ids"])
        for kind, fn in (("spearman", stats.spearmanr), ("pearson", stats.pearsonr)):
            expected = _expected_rho(want["entropy"], want["grad_norm"], fn)
            if expected is None:
                assert got[f"rho_{kind}"] is None
            else:
                assert got[f"rho_{kind}"] == pytest.approx(expected, abs=1e-9)
        assert got["entropy_mean"] == pytest.approx(float(want["entropy"].mean()), rel=1e-5)
    # Pooled over every thinking token of every response.
    entropy = torch.cat([d["entropy"] for d in direct]).numpy()
    grad_norm = torch.cat([d["grad_norm"] for d in direct]).numpy()
    assert summary["pooled_tokens"]["spearman"] == pytest.approx(stats.spearmanr(entropy, grad_norm)[0], abs=1e-9)
    assert summary["pooled_tokens"]["pearson"] == pytest.approx(stats.pearsonr(entropy, grad_norm)[0], abs=1e-9)
    # Per unique token: mean H and mean g of each vocabulary entry, then across entries.
    ids = np.concatenate([d["ids"] for d in direct])
    unique = np.unique(ids)
    mean_h = np.array([entropy[ids == u].mean() for u in unique])
    mean_g = np.array([grad_norm[ids == u].mean() for u in unique])
    assert summary["unique_tokens"]["num_points"] == len(unique)
    assert summary["unique_tokens"]["spearman"] == pytest.approx(stats.spearmanr(mean_h, mean_g)[0], abs=1e-9)


def test_param_grad_signal_matches_per_token_autograd(inversion_run, tiny_model_dir):
    """Both signals are reported with the paper's statistic; the param_grad one is the nuclear norm
    of ∂z[t, y_t]/∂W (q/v/o of the last layer, mean), checked with the exact per-token method."""
    from transformers import AutoModelForCausalLM

    from verl_repro.gradients import logit_gradient_norms

    summary, _ = inversion_run
    assert set(summary["signals"]) == {"param_grad", "softmax_grad"}
    assert summary["signals"]["softmax_grad"]["unique_tokens"] == summary["unique_tokens"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    direct = _direct(tiny_model_dir, _rows())
    entropy, strength, ids, per_response = [], [], [], []
    for d in direct:
        tokens = torch.tensor([d["prompt"] + d["response"]])
        norms = logit_gradient_norms(model, tokens, torch.roll(tokens, -1, dims=1), method="exact")[0, :, 0].mean(-1)
        n = len(d["ids"])
        s_t = norms[len(d["prompt"]) - 1 : len(d["prompt"]) - 1 + n].float().double()
        entropy.append(d["entropy"]), strength.append(s_t), ids.append(np.array(d["ids"]))
        if n >= MIN_TOKENS:
            per_response.append(stats.spearmanr(d["entropy"].numpy(), s_t.numpy())[0])
    entropy, strength, ids = torch.cat(entropy).numpy(), torch.cat(strength).numpy(), np.concatenate(ids)
    unique = np.unique(ids)
    mean_h = np.array([entropy[ids == u].mean() for u in unique])
    mean_s = np.array([strength[ids == u].mean() for u in unique])
    param_grad = summary["signals"]["param_grad"]
    assert param_grad["unique_tokens"]["num_points"] == len(unique)
    assert param_grad["unique_tokens"]["spearman"] == pytest.approx(stats.spearmanr(mean_h, mean_s)[0], abs=1e-6)
    assert param_grad["per_response_spearman"]["mean"] == pytest.approx(np.mean(per_response), abs=1e-6)
    assert param_grad["definition"] == {"matrices": ["q_proj", "v_proj", "o_proj"], "norm": "nuc", "aggregate": "mean", "layer": -1}


def test_correctness_split_and_skips(inversion_run):
    summary, _ = inversion_run
    counts = summary["counts"]
    assert (counts["correct"], counts["incorrect"], counts["unknown_correctness"]) == (3, 4, 0)
    assert counts["skipped"] == counts["skipped_few_tokens"] == 1
    assert counts["responses_without_think_end"] == 1
    correct = [r["rho_spearman"] for r in summary["responses"] if r["correct"] and r["rho_spearman"] is not None]
    incorrect = [r["rho_spearman"] for r in summary["responses"] if r["correct"] is False and r["rho_spearman"] is not None]
    assert summary["per_response"]["spearman"]["correct_mean"] == pytest.approx(np.mean(correct))
    assert summary["per_response"]["spearman"]["incorrect_mean"] == pytest.approx(np.mean(incorrect))
    assert summary["rho_mean"] == pytest.approx(np.mean(correct + incorrect))


def test_fingerprint_matches_autograd(inversion_run, tiny_model_dir):
    from transformers import AutoModelForCausalLM

    summary, _ = inversion_run
    fingerprint = summary["fingerprint"]
    assert fingerprint["num_params"] == 8  # q/k/v/o of 2 layers
    tokens = fingerprint["tokens"]
    assert len(tokens) == 6
    counts = [t["count"] for t in tokens]
    assert counts == sorted(counts, reverse=True)
    direct = _direct(tiny_model_dir, _rows())
    all_ids = np.concatenate([d["ids"] for d in direct])
    assert counts[0] == np.bincount(all_ids).max()  # the most frequent thinking token comes first

    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64)
    params = [p for name, p in model.named_parameters() if re.search(fingerprint["param_pattern"], name)]
    for token in tokens[:3]:
        row = direct[token["sample"]]
        assert row["response"][token["position"]] == token["token_id"]
        logits = model(input_ids=torch.tensor([row["prompt"] + row["response"]])).logits[0]
        raw_logit = logits[len(row["prompt"]) - 1 + token["position"], token["token_id"]]
        gradients = torch.autograd.grad(raw_logit, params)
        expected = math.sqrt(sum(float(g.double().norm()) ** 2 for g in gradients))
        assert token["param_grad_norm"] == pytest.approx(expected, rel=1e-5)
        assert token["entropy"] == pytest.approx(float(row["entropy"][token["position"]]), rel=1e-5)
    xs = [t["entropy"] for t in tokens]
    ys = [t["param_grad_norm"] for t in tokens]
    assert fingerprint["entropy_vs_param_grad_norm"]["spearman"] == pytest.approx(stats.spearmanr(xs, ys)[0], abs=1e-9)


def test_plots_open(inversion_run):
    from PIL import Image

    summary, out = inversion_run
    names = sorted(p.split("/")[-1] for p in summary["plots"])
    assert names == ["entropy_vs_grad_norm.png", "fingerprint.png", "rho_histogram.png"]
    for name in names:
        with Image.open(out / name) as image:
            image.verify()
        with Image.open(out / name) as image:
            assert image.format == "PNG" and image.size[0] > 100 and image.size[1] > 100


def test_summary_is_strict_json(inversion_run):
    _, out = inversion_run
    json.loads((out / "summary.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in summary"))


def test_verl_dump_parquet_and_sampling_with_nuclear_norm(tiny_model_dir, tmp_path):
    import pandas as pd

    # veRL's rollout dump fields (special tokens stripped, score given) in a parquet file ...
    dump = [
        {"input": "user\nWhat is 12 plus 30?\nassistant\n", "output": row["response"].replace("</think>", ""), "gts": "42", "score": s, "step": 1}
        for row, s in zip(_rows()[:2], (1.0, 0.0))
    ]
    pd.DataFrame(dump).to_parquet(tmp_path / "dump.parquet")
    code = main([
        "inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "dump.parquet"), "--output-dir",
        str(tmp_path / "dump"), "--min-tokens", "3", "--fingerprint-tokens", "2", "--fingerprint-norm", "nuc", "--no-progress",
    ])
    assert code == 0
    summary = json.loads((tmp_path / "dump" / "summary.json").read_text())
    assert summary["correctness_from"] == "score"
    assert (summary["counts"]["correct"], summary["counts"]["incorrect"]) == (1, 1)
    assert summary["counts"]["responses_without_think_end"] == 2  # the dump's text lost </think>
    assert summary["fingerprint"]["norm"] == "nuc" and len(summary["fingerprint"]["tokens"]) == 2

    # ... and chat-message prompts without responses: sampled with HF generate.
    prompts = [{"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "reward_model": {"ground_truth": "5"}}]
    _write_jsonl(tmp_path / "prompts.jsonl", prompts)
    code = main([
        "inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "prompts.jsonl"), "--output-dir",
        str(tmp_path / "sampled"), "--samples-per-prompt", "2", "--max-new-tokens", "12", "--fingerprint-tokens", "0",
        "--min-tokens", "3", "--no-progress",
    ])
    assert code == 0
    summary = json.loads((tmp_path / "sampled" / "summary.json").read_text())
    assert summary["counts"]["sampled_responses"] == 2
    assert all(1 <= r["response_tokens"] <= 12 for r in summary["responses"])
    assert summary["fingerprint"] is None
    assert summary["counts"]["incorrect"] == 2  # a random model does not box 5
    assert summary["sampling"]["greedy"] is False and summary["sampling"]["temperature"] == 1.0


def test_the_statistic_is_printed_beside_the_sampling_settings(tiny_model_dir, tmp_path, capsys):
    """ρ depends on how the responses were sampled (docs/corrpo.md): stdout and summary.json say how."""
    prompts = [{"prompt": [{"role": "user", "content": "What is 2 plus 3?"}], "reward_model": {"ground_truth": "5"}}]
    _write_jsonl(tmp_path / "prompts.jsonl", prompts)
    common = ["--model", str(tiny_model_dir), "--data", str(tmp_path / "prompts.jsonl"), "--samples-per-prompt", "2",
              "--max-new-tokens", "12", "--fingerprint-tokens", "0", "--min-tokens", "3", "--no-progress"]
    assert main(["inversion", *common, "--output-dir", str(tmp_path / "t07"), "--temperature", "0.7", "--top-p", "0.9"]) == 0
    out = capsys.readouterr().out
    lines = out.splitlines()
    where = next(i for i, line in enumerate(lines) if line.startswith("responses: sampled here: temperature 0.7, top-p 0.9"))
    assert "2 per prompt, ≤ 12 new tokens, seed 0; statistics at temperature 0.7" in lines[where]
    assert lines[where + 1].startswith("Spearman ρ(H, s) across unique tokens")
    assert "mean nuc norm over q_proj, v_proj, o_proj" in out

    assert main(["inversion", *common, "--output-dir", str(tmp_path / "greedy"), "--greedy"]) == 0
    assert "responses: sampled here: greedy, 2 per prompt" in capsys.readouterr().out
    summary = json.loads((tmp_path / "greedy" / "summary.json").read_text())
    assert summary["sampling"]["greedy"] is True and summary["sampling"]["temperature"] is None
    first, second = (r["response"] for r in summary["responses"])
    assert first == second  # greedy decoding: both samples of the prompt are the same

    _write_jsonl(tmp_path / "given.jsonl", _rows()[:1])
    assert main(["inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "given.jsonl"), "--output-dir",
                 str(tmp_path / "given"), "--fingerprint-tokens", "0", "--min-tokens", "3", "--no-progress"]) == 0
    assert f"responses: given in {tmp_path / 'given.jsonl'} (their sampling settings are whatever produced them)" in capsys.readouterr().out


def test_k_proj_takes_per_token_autograd_beside_the_fast_q_v_o(tiny_model_dir, tmp_path):
    """--matrices with k_proj: q/v/o from the fast form, k from exact autograd, averaged, equal to all
    four from the exact method."""
    from transformers import AutoModelForCausalLM

    from verl_repro.gradients import logit_gradient_norms

    rows = _rows()[:3]
    _write_jsonl(tmp_path / "rows.jsonl", rows)
    code = main(["inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "rows.jsonl"), "--output-dir",
                 str(tmp_path / "qkvo"), "--matrices", "q_proj,k_proj,v_proj,o_proj", "--min-tokens", "3",
                 "--fingerprint-tokens", "0", "--dtype", "float64", "--no-progress"])
    assert code == 0
    summary = json.loads((tmp_path / "qkvo" / "summary.json").read_text())
    assert summary["signals"]["param_grad"]["definition"]["matrices"] == ["q_proj", "k_proj", "v_proj", "o_proj"]
    model = AutoModelForCausalLM.from_pretrained(tiny_model_dir, dtype=torch.float64).eval()
    per_response = []
    for d in _direct(tiny_model_dir, rows):
        tokens = torch.tensor([d["prompt"] + d["response"]])
        norms = logit_gradient_norms(model, tokens, torch.roll(tokens, -1, dims=1), method="exact",
                                     matrices=("q_proj", "k_proj", "v_proj", "o_proj"))[0, :, 0].mean(-1)
        n = len(d["ids"])
        s_t = norms[len(d["prompt"]) - 1 : len(d["prompt"]) - 1 + n].float().double()
        if n >= 3:
            per_response.append(stats.spearmanr(d["entropy"].numpy(), s_t.numpy())[0])
    assert summary["signals"]["param_grad"]["per_response_spearman"]["mean"] == pytest.approx(np.mean(per_response), abs=1e-6)


def test_nuclear_norm_of_a_gradient():
    from verl_repro.analysis.inversion import parameter_gradient_norm

    # diag(3, 4): Frobenius 5, nuclear 7; a vector contributes its 2-norm either way.
    matrix = torch.diag(torch.tensor([3.0, 4.0]))
    vector = torch.tensor([0.0, 24.0])
    assert parameter_gradient_norm([matrix], "fro") == pytest.approx(5.0)
    assert parameter_gradient_norm([matrix], "nuc") == pytest.approx(7.0)
    assert parameter_gradient_norm([matrix, vector], "nuc") == pytest.approx(25.0)


def test_bad_inputs_fail_clearly(tiny_model_dir, tmp_path, capsys):
    from verl_repro.analysis.inversion import load_rows

    with pytest.raises(FileNotFoundError, match="--data"):
        load_rows(tmp_path / "missing.jsonl")
    (tmp_path / "bad.jsonl").write_text('{"prompt": "a"}\nnot json\n')
    with pytest.raises(ValueError, match="bad.jsonl:2"):
        load_rows(tmp_path / "bad.jsonl")
    _write_jsonl(tmp_path / "noprompt.jsonl", [{"response": "x"}])
    assert main(["inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "noprompt.jsonl"), "--no-progress"]) == 2
    assert capsys.readouterr().err == "verl-repro inversion: error: row 0: no prompt (looked for prompt, input, question, problem)\n"
    _write_jsonl(tmp_path / "ok.jsonl", _rows()[:1])
    assert main([
        "inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "ok.jsonl"), "--output-dir",
        str(tmp_path / "o"), "--fingerprint-params", "no_such_param", "--no-progress",
    ]) == 2
    assert capsys.readouterr().err.endswith("error: --fingerprint-params 'no_such_param' matches no parameter of the model\n")
    assert not any((tmp_path / "o").iterdir())  # refused before any sampling: nothing written


def test_a_rerun_never_mixes_with_an_earlier_one(tiny_model_dir, tmp_path, capsys):
    """A rerun without the fingerprint used to leave the old fingerprint.png beside the new summary."""
    _write_jsonl(tmp_path / "ok.jsonl", _rows()[:1])
    out = tmp_path / "out"
    out.mkdir()
    (out / "fingerprint.png").write_bytes(b"an earlier run")
    assert main(["inversion", "--model", str(tiny_model_dir), "--data", str(tmp_path / "ok.jsonl"), "--output-dir", str(out),
                 "--fingerprint-tokens", "0", "--no-progress"]) == 2
    assert "--output-dir" in capsys.readouterr().err and (out / "fingerprint.png").read_bytes() == b"an earlier run"
