"""Prompt tools: taxonomy expansion (templates and a local LLM), filtering, stats and the histogram PNG."""

import json
from collections import Counter

import numpy as np
import pytest
from PIL import Image

from diffsynth_l2p import cli
from diffsynth_l2p.data.prompts import (
    MAJOR_KEY,
    SUB_KEY,
    clean_generated,
    draw_length_histogram,
    expand_from_templates,
    expand_with_llm,
    filter_prompts,
    format_problem,
    length_histogram,
    normalize_prompt,
    read_prompts,
    write_prompts,
)
from diffsynth_l2p.data.taxonomy import GENERAL_RULES, TAXONOMY, llm_instruction, major_class, sub_class_table

GOOD = "A quiet harbor at dawn with wooden fishing boats, soft mist over the water and gulls resting on the pier posts."


def test_taxonomy_has_four_classes_and_seventeen_sub_classes():
    assert [major.name for major in TAXONOMY] == ["Nature", "Design", "Text", "People"]
    table = sub_class_table()
    assert len(table) == 17 and len({sub for _, sub, _ in table}) == 17
    assert all(len(categories) >= 8 for _, _, categories in table)
    instruction = llm_instruction(major_class("text"), "Posters and Covers", "concert poster")
    assert GENERAL_RULES in instruction and major_class("Text").rules in instruction
    assert "Posters and Covers" in instruction and "concert poster" in instruction
    with pytest.raises(ValueError, match="unknown major class"):
        major_class("Animals")


def test_template_expansion_is_deterministic_and_well_formed():
    records = expand_from_templates(per_sub_class=6, seed=3)
    assert records == expand_from_templates(per_sub_class=6, seed=3)
    assert records != expand_from_templates(per_sub_class=6, seed=4)
    assert [record["id"] for record in records] == list(range(17 * 6))
    assert set(records[0]) == {"id", MAJOR_KEY, SUB_KEY, "prompt"}
    assert set(Counter(record[SUB_KEY] for record in records).values()) == {6}
    assert all(format_problem(record["prompt"]) is None for record in records)
    assert len(filter_prompts(records).kept) == len(records)  # all distinct and within 100-500 characters
    text_prompts = [record["prompt"] for record in records if record[MAJOR_KEY] == "Text"]
    assert all(prompt.count('"') == 2 for prompt in text_prompts)  # the text to render is quoted


@pytest.mark.parametrize(
    "prompt, problem",
    [
        (GOOD, None),
        ('A sign that reads "OPEN LATE on a brick wall at night, glowing softly in the rain.', "unbalanced quotes"),
        ("A red kite (flying high over a green meadow on a windy afternoon.", "unbalanced brackets"),
        ("A cat sitting on a {setting} with warm light falling on its fur.", "unfilled template placeholder"),
        ("A cat sitting on a sofa\twith warm light falling on its fur.", "control characters"),
        ("1. A cat sitting on a sofa with warm light falling on its fur.", "list marker or label prefix"),
        ("Prompt: a cat sitting on a sofa with warm light falling on its fur.", "list marker or label prefix"),
        ("A cat cat cat sitting on a sofa with warm light falling on its fur.", "repeated words"),
        ("#### 1234 5678 #### !!!! ???? a b", "mostly non-letters"),
    ],
)
def test_format_problems(prompt, problem):
    assert format_problem(prompt) == problem


def test_filter_keeps_the_length_window_and_drops_normalized_duplicates():
    records = [
        {"prompt": GOOD, "id": 1},
        {"prompt": "  " + GOOD.upper().replace(",", " ;") + "  ", "id": 2},  # same words: a duplicate
        {"prompt": "Too short.", "id": 3},
        {"prompt": GOOD + " " + "More detail follows here. " * 20, "id": 4},
        {"prompt": GOOD.replace("harbor", "harbour"), "id": 5},
        {"prompt": 'Broken "quote ' + GOOD, "id": 6},
    ]
    result = filter_prompts(records)
    assert [record["id"] for record in result.kept] == [1, 5]
    assert result.rejected == Counter(
        {"duplicate": 1, "length outside 100-500 characters": 2, "unbalanced quotes": 1}
    )
    assert normalize_prompt("Hello,  WORLD!") == normalize_prompt("hello world") == "hello world"
    assert [r["id"] for r in filter_prompts(records, min_chars=5, max_chars=2000).kept] == [1, 3, 4, 5]
    with pytest.raises(ValueError, match="min_chars <= max_chars"):
        filter_prompts(records, min_chars=10, max_chars=5)


def test_expand_filter_stats_cli_chain(tmp_path, capsys):
    expanded, filtered, png = tmp_path / "expanded.jsonl", tmp_path / "filtered.jsonl", tmp_path / "lengths.png"
    assert cli.main(["prompts", "expand", "--out", str(expanded), "--per_sub_class", "5", "--seed", "1"]) == 0
    records = read_prompts(str(expanded))
    assert len(records) == 85
    # Add what filter must remove: a near-duplicate and two prompts outside the default window.
    extra = [{"prompt": records[0]["prompt"].lower()}, {"prompt": "short"}, {"prompt": "x " * 300}]
    write_prompts(records + extra, str(expanded))

    assert cli.main(["prompts", "filter", str(expanded), "--out", str(filtered)]) == 0
    assert "kept 85 of 88 prompts" in capsys.readouterr().out
    kept = read_prompts(str(filtered))
    assert kept == records
    lengths = [len(record["prompt"]) for record in kept]
    assert all(100 <= length <= 500 for length in lengths)
    assert len({normalize_prompt(record["prompt"]) for record in kept}) == len(kept)

    assert cli.main(["prompts", "stats", str(filtered), "--histogram", str(png), "--bins", "10"]) == 0
    out = capsys.readouterr().out
    assert "85 prompts" in out and "Nature/Landscapes" in out and f"max {max(lengths)}" in out
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size == (720, 420)
        assert (np.asarray(image.convert("RGB")) == (70, 110, 180)).all(axis=-1).sum() > 1000  # bars drawn

    txt = tmp_path / "filtered.txt"
    assert cli.main(["prompts", "filter", str(filtered), "--out", str(txt)]) == 0
    assert txt.read_text().splitlines() == [record["prompt"] for record in kept]


def test_histogram_bins_and_tallest_bar(tmp_path):
    lengths = [100] * 5 + [150] * 2 + [199]
    histogram = length_histogram(lengths, bins=4)
    assert histogram == [(100, 124, 5), (125, 149, 0), (150, 174, 2), (175, 199, 1)]
    draw_length_histogram(lengths, str(tmp_path / "h.png"), bins=4)
    pixels = np.asarray(Image.open(tmp_path / "h.png").convert("RGB"))
    blue = (pixels == (70, 110, 180)).all(axis=-1)
    heights = [int(blue[:, 60 + 75 + 150 * i].sum()) for i in range(4)]  # plot 600x300 px from (60, 60)
    assert heights[0] == 300 and heights[1] == 0 and abs(heights[2] - 120) <= 1 and abs(heights[3] - 60) <= 1
    with pytest.raises(ValueError, match="no prompts"):
        length_histogram([])


def test_read_prompts_errors_name_the_lines(tmp_path):
    txt = tmp_path / "p.txt"
    txt.write_text("first prompt\n\n  second prompt  \n")
    assert read_prompts(str(txt)) == [{"prompt": "first prompt"}, {"prompt": "second prompt"}]
    empty = tmp_path / "empty.jsonl"
    empty.write_text("\n\n")
    with pytest.raises(ValueError, match="contains no prompts"):
        read_prompts(str(empty))
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "ok"}) + "\n[1, 2]\n\n{oops\n" + json.dumps({"prompt": ""}) + "\n")
    with pytest.raises(ValueError) as error:
        read_prompts(str(bad))
    message = str(error.value)
    assert "3 malformed record(s)" in message
    assert "line 2: expected an object" in message and "line 4: not valid JSON" in message and "line 5:" in message
    with pytest.raises(FileNotFoundError):
        read_prompts(str(tmp_path / "missing.txt"))


@pytest.mark.parametrize(
    "name, content, message",
    [
        ("p.jsonl", '{"prompt": "a", "seed": null}\n', r"line 1: 'seed' must be an integer in 0..2\*\*64-1, got null"),
        ("p.jsonl", '{"prompt": "a cat", "seed": "7"}\n', "got the text '7' \\(write it without quotes\\)"),
        ("p.jsonl", '{"prompt": "a"}\n{"prompt": "b", "seed": -1}\n', "line 2: 'seed' must be an integer"),
        ("p.jsonl", '{"prompt": "a", "seed": 18446744073709551616}\n', "'seed' must be an integer"),
        ("p.jsonl", '{"prompt": 5}\n', "line 1: 'prompt' must be a non-empty string, got 5"),
        ("p.jsonl", '{"prompt": "a", "negative_prompt": 3}\n', "'negative_prompt' must be a string, got 3"),
        ("p.jsonl", '["a cat"]\n', "line 1: expected an object .* got a list"),
        ("p.json", '{"prompt": "a cat"}', "holds one JSON object; expected a list"),
        ("p.json", '[{"prompt": "a"}, "b"]', "item 2: expected an object .* got the text 'b'"),
        ("p.jsonl", "[" * 100_000 + "\n", "line 1: not valid JSON"),
    ],
)
def test_prompt_records_are_schema_checked(tmp_path, name, content, message):
    path = tmp_path / name
    path.write_text(content)
    with pytest.raises(ValueError, match=message):
        read_prompts(str(path))


def test_a_json_list_of_records_is_read(tmp_path):
    path = tmp_path / "p.json"
    path.write_text(json.dumps([{"prompt": "a cat", "seed": 3}, {"prompt": "a dog"}], indent=2))
    assert read_prompts(str(path)) == [{"prompt": "a cat", "seed": 3}, {"prompt": "a dog"}]


def test_clean_generated_strips_llm_wrapping():
    assert clean_generated("<think>\nplan\n</think>\n\n1. \"A red fox in fresh snow.\"\n\nSecond idea") == (
        "A red fox in fresh snow."
    )
    assert clean_generated("Prompt:  A lighthouse\n at dusk.") == "A lighthouse at dusk."
    assert clean_generated("<think>never closed") == ""


def test_llm_expansion_with_a_local_causal_lm(tmp_path):
    from transformers import Qwen3Config, Qwen3ForCausalLM

    from diffsynth_l2p.tiny import VOCABULARY, build_tokenizer

    torch = pytest.importorskip("torch")
    torch.manual_seed(0)
    config = Qwen3Config(
        vocab_size=len(VOCABULARY), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, pad_token_id=0,
    )  # fmt: skip
    Qwen3ForCausalLM(config).save_pretrained(tmp_path / "llm")
    build_tokenizer().save_pretrained(tmp_path / "llm")

    records = expand_with_llm(str(tmp_path / "llm"), per_sub_class=2, seed=0, max_new_tokens=12, batch_size=16)
    assert records == expand_with_llm(str(tmp_path / "llm"), per_sub_class=2, seed=0, max_new_tokens=12, batch_size=16)
    assert 17 <= len(records) <= 34  # random weights: a reply can decode to nothing and is then dropped
    assert [record["id"] for record in records] == list(range(len(records)))
    assert {(record[MAJOR_KEY], record[SUB_KEY]) for record in records} <= {(m, s) for m, s, _ in sub_class_table()}
    assert all(record["prompt"] and record["prompt"] == clean_generated(record["prompt"]) for record in records)

    with pytest.raises(FileNotFoundError, match="local transformers causal LM"):
        expand_with_llm(str(tmp_path / "nothing"), per_sub_class=1)
