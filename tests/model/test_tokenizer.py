"""headscope's tokenizer (the `tokenizers` library, no transformers) against Hugging Face's
AutoTokenizer on the same files: the same ids and character offsets for every paragraph of the
shared sample and for odd strings, the same decoding and vocabulary."""

from __future__ import annotations

import json
import shutil

import pytest
from transformers import AutoTokenizer

from headscope.errors import StartupError
from headscope.model.loading import load_tokenizer
from tests.helpers import CORPUS, STANDIN_DIR, TOKENIZER_DIR

ODD_TEXTS = [
    'Tom said, "I like the lake." Then he ran.',
    "  leading spaces, trailing spaces   ",
    "many     spaces\tand\ttabs",
    "line one\nline two\n\n\nafter blank lines\r\nwindows line",
    "The end.<|endoftext|>Once upon a time",
    "<|endoftext|>",
    " <|endoftext|> <|endoftext|><|endoftext|>x",
    "<|endoftext",
    "café naïve coöperate — “curly quotes” ‘single’ … ellipsis",
    "emoji 🐶🐱 and a family 👨‍👩‍👧 and flags 🇫🇷",
    "日本語のテキスト、中文文本，한국어 텍스트",
    "Ελληνικά и русский текст",
    "zero\u200bwidth and combining e\u0301 and nbsp\u00a0here",
    "lone surrogate-free control chars \x00\x01\x7f end",
    "numbers 1234567890 3.14159 -42 1e-5",
    "'s 't 're 've 'm 'll 'd OK'S",
    "",
    " ",
    "\n",
]


def paragraphs() -> list[str]:
    return [part for part in CORPUS.read_text().split("\n\n") if part]


def assert_same_encodings(ours, theirs, texts: list[str]) -> None:
    for text in texts:
        for add_special_tokens in (False, True):
            expected = theirs(
                text, add_special_tokens=add_special_tokens, return_offsets_mapping=True
            )
            got = ours(text, add_special_tokens=add_special_tokens)
            assert got.input_ids == expected["input_ids"], text
            assert got.offset_mapping == [tuple(pair) for pair in expected["offset_mapping"]], text
            assert got["input_ids"] == got.input_ids


@pytest.fixture(scope="module")
def hf_standin():
    return AutoTokenizer.from_pretrained(STANDIN_DIR)


@pytest.fixture(scope="module")
def ours_standin():
    return load_tokenizer(STANDIN_DIR)


def test_every_sample_paragraph_tokenizes_as_hugging_face(ours_standin, hf_standin):
    texts = paragraphs()
    assert len(texts) > 4000
    assert_same_encodings(ours_standin, hf_standin, texts)
    # Whole stories too: pre-tokens never cross the blank lines between paragraphs.
    assert_same_encodings(ours_standin, hf_standin, [CORPUS.read_text()[:20000]])


def test_odd_strings_tokenize_as_hugging_face(ours_standin, hf_standin):
    assert_same_encodings(ours_standin, hf_standin, ODD_TEXTS)
    # <|endoftext|> inside a text is the one special token, not its characters.
    assert ours_standin("a<|endoftext|>b").input_ids[1] == 50256


def test_decode_vocabulary_and_identity_match(ours_standin, hf_standin):
    assert len(ours_standin) == len(hf_standin) == 50257
    assert ours_standin.get_vocab() == hf_standin.get_vocab()
    assert ours_standin.name_or_path == hf_standin.name_or_path == str(STANDIN_DIR)
    id_lists = [ours_standin(text).input_ids for text in ODD_TEXTS + paragraphs()[:200]]
    # Half a multi-byte character, and the special token, decoded alone and mixed.
    id_lists += [[447], [447, 251], [50256], [15496, 50256, 220, 11], []]
    for ids in id_lists:
        for skip in (False, True):
            assert ours_standin.decode(ids, skip_special_tokens=skip) == hf_standin.decode(
                ids, skip_special_tokens=skip
            ), ids


def copy_tokenizer_files(target, **config_changes):
    target.mkdir()
    for name in ("vocab.json", "merges.txt", "special_tokens_map.json", "tokenizer_config.json"):
        shutil.copy(TOKENIZER_DIR / name, target / name)
    config = json.loads((target / "tokenizer_config.json").read_text())
    (target / "tokenizer_config.json").write_text(json.dumps({**config, **config_changes}))
    return target


def test_add_prefix_space_from_tokenizer_config(tmp_path):
    directory = copy_tokenizer_files(tmp_path / "prefix", add_prefix_space=True)
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert_same_encodings(ours, theirs, ODD_TEXTS + paragraphs()[:50])
    assert ours("Hello").input_ids != load_tokenizer(TOKENIZER_DIR)("Hello").input_ids


def test_extra_special_tokens_from_tokenizer_config(tmp_path):
    directory = copy_tokenizer_files(
        tmp_path / "special", pad_token="<pad>", additional_special_tokens=["<sep>", "<x>"]
    )
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    text = "a <pad> b<sep> c <x>d <|endoftext|> <pa d>"
    assert_same_encodings(ours, theirs, [text, *ODD_TEXTS])
    assert len(ours) == len(theirs) == 50260
    assert ours("<pad><sep><x>").input_ids == [50257, 50258, 50259]


@pytest.mark.parametrize("trim_offsets", [False, True])
def test_tokenizer_json_is_used_as_hugging_face_uses_it(tmp_path, ours_standin, trim_offsets):
    """A tokenizer.json wins over vocab.json + merges.txt, post-processor and all."""
    from tokenizers import processors

    directory = copy_tokenizer_files(tmp_path / "with-json")
    backend = ours_standin.backend
    backend_json = json.loads(backend.to_str())
    backend_json["post_processor"] = json.loads(
        processors.ByteLevel(trim_offsets=trim_offsets).__getstate__()
    )
    (directory / "tokenizer.json").write_text(json.dumps(backend_json))
    ours, theirs = load_tokenizer(directory), AutoTokenizer.from_pretrained(directory)
    assert_same_encodings(ours, theirs, ODD_TEXTS + paragraphs()[:200])
    trimmed = ours("Hello  cat").offset_mapping
    assert trimmed == ([(0, 5), (6, 6), (7, 10)] if trim_offsets else [(0, 5), (5, 6), (6, 10)])


def test_unreadable_tokenizer_files_name_the_directory(tmp_path):
    directory = copy_tokenizer_files(tmp_path / "broken")
    (directory / "vocab.json").write_text("{not json")
    with pytest.raises(StartupError, match=str(directory)):
        load_tokenizer(directory)
