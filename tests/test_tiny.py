"""The tiny model set: on-disk formats, DiffSynth detection, reproducibility, tokenizer, the default model."""

from pathlib import Path

import numpy as np
import pytest
import torch
from diffsynth.core import hash_model_file
from safetensors.torch import load_file
from transformers import AutoTokenizer

from diffsynth_l2p import model_set
from diffsynth_l2p.models.configs import L2P_CONFIGS, TINY_TEXT_ENCODER_CONFIG
from diffsynth_l2p.models.text_encoder import TEXT_ENCODER_CLASS, Qwen3TextEncoder
from diffsynth_l2p.pipelines.loading import load_pipeline
from diffsynth_l2p.registry import L2P_DIT_MODEL_NAME, TINY_DIT_HASH, TINY_TEXT_ENCODER_HASH, find_registered, meta_hash
from diffsynth_l2p.tiny import UNK_TOKEN, VOCABULARY, build_tiny_l2p


def test_layout_and_returned_paths(tiny_model_set):
    assert set(tiny_model_set) == {"dit", "text_encoder", "tokenizer"}
    assert tiny_model_set["dit"].endswith(".safetensors") and isinstance(tiny_model_set["text_encoder"], list)
    assert Path(tiny_model_set["dit"]).is_file() and Path(tiny_model_set["text_encoder"][0]).is_file()
    assert (Path(tiny_model_set["tokenizer"]) / "tokenizer.json").is_file()


def test_files_are_detected_by_diffsynth_as_the_pipeline_models(tiny_model_set):
    assert hash_model_file(tiny_model_set["dit"]) == TINY_DIT_HASH
    assert hash_model_file(tiny_model_set["text_encoder"]) == TINY_TEXT_ENCODER_HASH
    assert [e["model_name"] for e in find_registered(TINY_DIT_HASH)] == [L2P_DIT_MODEL_NAME]
    (entry,) = find_registered(TINY_TEXT_ENCODER_HASH)
    assert entry["model_name"] == "z_image_text_encoder" and entry["model_class"] == TEXT_ENCODER_CLASS


def test_text_encoder_width_is_the_tiny_dit_caption_width():
    assert TINY_TEXT_ENCODER_CONFIG["hidden_size"] == L2P_CONFIGS["tiny"].kwargs["cap_feat_dim"]
    assert TINY_TEXT_ENCODER_CONFIG["vocab_size"] == len(VOCABULARY) == len(set(VOCABULARY))
    encoder = Qwen3TextEncoder(**TINY_TEXT_ENCODER_CONFIG)
    ids = torch.tensor([[2, 10, 11, 3]])
    hidden = encoder(input_ids=ids, attention_mask=torch.ones_like(ids), output_hidden_states=True).hidden_states[-2]
    assert hidden.shape == (1, 4, 64)
    assert meta_hash(Qwen3TextEncoder, **TINY_TEXT_ENCODER_CONFIG) == TINY_TEXT_ENCODER_HASH


def test_same_seed_same_weights_other_seed_other_weights(tiny_model_set, tmp_path):
    again = build_tiny_l2p(tmp_path / "again", seed=0)
    other = build_tiny_l2p(tmp_path / "other", seed=1)
    for part in ("dit", "text_encoder"):
        reference = load_file(tiny_model_set[part] if part == "dit" else tiny_model_set[part][0])
        same = load_file(again[part] if part == "dit" else again[part][0])
        different = load_file(other[part] if part == "dit" else other[part][0])
        assert all(torch.equal(reference[key], same[key]) for key in reference)
        assert not any(torch.equal(reference[key], different[key]) for key in reference if reference[key].dim() >= 2)


def test_every_weight_is_initialised(tiny_model_set):
    state = load_file(tiny_model_set["dit"])
    assert all(torch.isfinite(value).all() for value in state.values())
    for key in ("x_pad_token", "cap_pad_token"):  # torch.empty in the DiT constructor
        assert 0.01 < state[key].std().item() < 0.04
    matrix = state["layers.0.attention.to_q.weight"]
    assert matrix.std().item() == pytest.approx(matrix.shape[1] ** -0.5, rel=0.1)


def test_refuses_a_non_empty_directory(tmp_path):
    (tmp_path / "keep.txt").write_text("x")
    with pytest.raises(FileExistsError, match="not empty"):
        build_tiny_l2p(tmp_path)
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_tokenizer_mimics_qwen3_chat_layout(tiny_model_set):
    tokenizer = AutoTokenizer.from_pretrained(tiny_model_set["tokenizer"])
    messages = [{"role": "user", "content": "Two RED circles, left."}]
    text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True, enable_thinking=True)
    assert text == "<|im_start|>user\nTwo RED circles, left.<|im_end|>\n<|im_start|>assistant\n"
    no_think = tokenizer.apply_chat_template(
        messages, tokenize=False, add_generation_prompt=True, enable_thinking=False
    )
    assert no_think == text + "<think>\n\n</think>\n\n"
    tokens = tokenizer.convert_ids_to_tokens(tokenizer(text)["input_ids"])
    assert tokens == ["<|im_start|>", "user", "two", "red", "circles", ",", "left", ".", "<|im_end|>"] + [
        "<|im_start|>",
        "assistant",
    ]
    assert tokenizer.convert_ids_to_tokens(tokenizer("a zebra")["input_ids"]) == ["a", UNK_TOKEN]
    padded = tokenizer([text], padding="max_length", max_length=512, truncation=True)
    assert len(padded["input_ids"][0]) == 512 and sum(padded["attention_mask"][0]) == len(tokens)


def test_random_model_draws_non_degenerate_images(tiny_model_set):
    pipe = load_pipeline(tiny_model_set)
    image = np.asarray(pipe("a red circle", height=64, width=64, num_inference_steps=4, progress_bar_cmd=list))
    other = np.asarray(pipe("a blue square", height=64, width=64, num_inference_steps=4, progress_bar_cmd=list))
    assert image.std() > 20 and np.mean((image == 0) | (image == 255)) < 0.5
    assert len(np.unique(image.reshape(-1, 3), axis=0)) > 1000
    assert not np.array_equal(image, other)  # the prompt reaches the image


def test_default_model_is_the_shipped_student_and_its_absence_names_the_fix(tmp_path, monkeypatch):
    assert model_set.default_model_dir() == model_set.DEFAULT_MODEL_DIR
    assert (model_set.DEFAULT_MODEL_DIR / model_set.DIT_FILE).is_file()
    monkeypatch.setattr(model_set, "DEFAULT_MODEL_DIR", tmp_path)
    with pytest.raises(FileNotFoundError, match="reinstall diffsynth-l2p, or pass --model"):
        model_set.default_model_dir()
