"""Tests of mer.tokenizer against llama.cpp's tokenization.

The SmolLM2 tests use the real model file: $MER_TEST_MODEL, else the default model, downloaded on
first use (see conftest.py). Their expected ids are llama.cpp's output on that file, with
add_special and parse_special on where a test passes no other flags. The SentencePiece tests build a small vocabulary in code, and their expected ids are
llama.cpp's output (through llama-cpp-python 0.3.36) on a GGUF file holding that vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from mer.errors import MerError, ModelFormatError, UnsupportedModelError
from mer.tokenizer import ChatTemplateError, StreamDecoder, Tokenizer

gguf = pytest.importorskip("gguf")


def read_gguf_metadata(path: Path) -> dict[str, Any]:
    """Read a GGUF file's metadata as plain Python values, with arrays as lists."""
    reader = gguf.GGUFReader(path)
    metadata: dict[str, Any] = {}
    for key, field in reader.fields.items():
        # GGUF.version, GGUF.tensor_count and GGUF.kv_count come from the header.
        if key.startswith("GGUF."):
            continue
        # contents() decodes strings as UTF-8 and returns arrays as lists.
        metadata[key] = field.contents()
    return metadata


@pytest.fixture(scope="module")
def smollm_metadata(smollm2_file: Path) -> dict[str, Any]:
    return read_gguf_metadata(smollm2_file)


@pytest.fixture(scope="module")
def smollm(smollm_metadata: dict[str, Any], smollm2_file: Path) -> Tokenizer:
    return Tokenizer.from_metadata(smollm_metadata, source=str(smollm2_file))


EMOJI_TEXT = "Café naïve résumé — 日本語のテキスト 🚀 and then"

SMOLLM_ENCODINGS = [
    ("The capital of France is", [504, 3575, 282, 4649, 314]),
    ("def fibonacci(n):", [1604, 3987, 46477, 24, 94, 727]),
    (
        "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
        [1, 4093, 198, 1780, 314, 216, 34, 27, 34, 47, 2, 198, 1, 520, 9531, 198],
    ),
    ("hello\n\nworld\n", [28120, 198, 198, 6693, 198]),
    ("  ", [256]),
    ("e\u0301", [85, 151, 219]),
    (
        EMOJI_TEXT,
        [51, 1939, 2756, 15486, 46494, 412, 2756, 5422, 2756, 1841, 17097, 241, 115, 40993,
         179, 120, 248, 26453, 11100, 224, 10391, 251, 10391, 134, 11100, 226, 15107, 244,
         218, 284, 965],
    ),
]

ROUND_TRIP_TEXTS = [
    "",
    "plain ASCII, with punctuation!?",
    "  leading and trailing spaces  ",
    "tabs\tand\r\nwindows newlines\n\n\n",
    EMOJI_TEXT,
    "e\u0301 versus \u00e9 (decomposed and precomposed)",
    "Привет, мир! مرحبا بالعالم. שלום עולם. नमस्ते दुनिया. สวัสดีชาวโลก",
    "한국어 中文 日本語 12345 ٣٤٥ ½ Ⅻ",
    "family 👨\u200d👩\u200d👧, thumbs 👍🏽, flag 🇫🇷, math 𝔘𝔫𝔦",
    "zero\u200bwidth\ufeffmarks\u00a0and\u3000ideographic space",
    "code: def f(x):\n    return x ** 2  # square",
    "control text <|im_start|> survives a round trip",
]


@pytest.mark.parametrize(("text", "expected"), SMOLLM_ENCODINGS)
def test_smollm_encode_matches_llama_cpp(
    smollm: Tokenizer, text: str, expected: list[int]
) -> None:
    assert smollm.encode(text) == expected


def test_smollm_decode_answer(smollm: Tokenizer) -> None:
    assert smollm.decode([504, 2988, 314, 42, 216, 36]) == "The answer is: 4"


def test_smollm_special_ids(smollm: Tokenizer) -> None:
    assert smollm.n_vocab == 49152
    assert smollm.bos_id == 1
    assert smollm.eos_id == 2
    assert smollm.token_bytes(2) == b"<|im_end|>"
    assert 2 in smollm.eog_ids
    assert 1 not in smollm.eog_ids


def test_smollm_adds_no_bos(smollm: Tokenizer) -> None:
    # The file sets tokenizer.ggml.add_bos_token to false.
    assert smollm.encode("hello", add_special=True) == smollm.encode("hello", add_special=False)


@pytest.mark.parametrize("text", ROUND_TRIP_TEXTS)
def test_smollm_round_trip(smollm: Tokenizer, text: str) -> None:
    assert smollm.decode(smollm.encode(text)) == text


def test_smollm_parse_special_off_splits_control_text(smollm: Tokenizer) -> None:
    ids = smollm.encode("<|im_start|>", add_special=False, parse_special=False)
    # llama.cpp's output on the same file with parse_special off.
    assert ids == [44, 108, 306, 79, 3738, 108, 46]
    assert smollm.decode(ids) == "<|im_start|>"


def test_smollm_decode_skips_control_tokens(smollm: Tokenizer) -> None:
    ids = smollm.encode("<|im_start|>user\nHi<|im_end|>")
    assert smollm.decode(ids) == "<|im_start|>user\nHi<|im_end|>"
    assert smollm.decode(ids, skip_special=True) == "user\nHi"


def test_stream_decoder_keeps_characters_whole(smollm: Tokenizer) -> None:
    ids = smollm.encode(EMOJI_TEXT)
    decoder = StreamDecoder(smollm)
    pieces = [decoder.feed(token_id) for token_id in ids]
    pieces.append(decoder.flush())

    # Several tokens of this text hold part of a character, so some pieces must be empty.
    assert any(not smollm.token_bytes(i).decode("utf-8", errors="ignore") for i in ids)
    for piece in pieces:
        assert "\ufffd" not in piece
    assert "".join(pieces) == smollm.decode(ids)
    assert "".join(pieces) == EMOJI_TEXT


def test_stream_decoder_flush_replaces_incomplete_character(smollm: Tokenizer) -> None:
    # 🚀 is F0 9F 9A 80. Find the token that starts it and feed only that one.
    ids = smollm.encode("🚀", add_special=False)
    first = smollm.token_bytes(ids[0])
    assert len(ids) > 1
    assert first.startswith(b"\xf0")

    decoder = StreamDecoder(smollm)
    assert decoder.feed(ids[0]) == ""
    assert decoder.flush() == "\ufffd"


def test_stream_decoder_renders_control_tokens(smollm: Tokenizer) -> None:
    decoder = StreamDecoder(smollm)
    assert decoder.feed(2) == "<|im_end|>"

    skipping = StreamDecoder(smollm, skip_special=True)
    assert skipping.feed(2) == ""


def test_token_id_out_of_range_raises(smollm: Tokenizer) -> None:
    with pytest.raises(ValueError, match="49152"):
        smollm.decode([49152])
    with pytest.raises(ValueError):
        smollm.token_bytes(-1)


def test_smollm_chat_template_renders_chatml(smollm: Tokenizer) -> None:
    prompt = smollm.render_chat([{"role": "user", "content": "What is 2+2?"}])
    assert prompt.endswith("<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n")
    # The template adds its default system message when the conversation has none.
    assert prompt.startswith("<|im_start|>system\n")


def test_smollm_chat_template_without_generation_prompt(smollm: Tokenizer) -> None:
    messages = [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "Hi"},
    ]
    prompt = smollm.render_chat(messages, add_generation_prompt=False)
    assert prompt == "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n"


# SmolLM2's vocabulary with tokenizer.ggml.pre replaced. The expected ids are llama.cpp's output
# on a copy of the model file in which only that key was changed.
PRE_TOKENIZER_ENCODINGS = [
    ("smollm", "don't\r\n\r\nstop", [12420, 982, 7209, 198, 9796]),
    ("gpt-2", "don't\r\n\r\nstop", [12420, 982, 7209, 198, 9796]),
    ("llama3", "don't\r\n\r\nstop", [12420, 982, 18682, 9796]),
    ("qwen2", "don't\r\n\r\nstop", [12420, 982, 18682, 9796]),
    ("dbrx", "don't\r\n\r\nstop", [12420, 982, 18682, 9796]),
    ("default", "don't\r\n\r\nstop", [12420, 23, 100, 7209, 198, 9796]),
    ("smollm", "x  \n\n  y", [104, 256, 8866, 329]),
    ("llama3", "x  \n\n  y", [104, 256, 1116, 216, 329]),
    ("smollm", "<b>x</b> == y", [44, 82, 46, 104, 9617, 82, 46, 1758, 329]),
    ("default", "<b>x</b> == y", [44, 82, 46, 104, 9617, 82, 46, 216, 1189, 329]),
    ("smollm", "Hello world's 12345 test", [19556, 905, 506, 216, 33, 34, 35, 36, 37, 1028]),
    ("default", "Hello world's 12345 test", [19556, 905, 23, 99, 216, 33, 34, 35, 36, 37, 1028]),
]


@pytest.mark.parametrize(("pre", "text", "expected"), PRE_TOKENIZER_ENCODINGS)
def test_pre_tokenizer_matches_llama_cpp(
    smollm_metadata: dict[str, Any], pre: str, text: str, expected: list[int]
) -> None:
    metadata = {**smollm_metadata, "tokenizer.ggml.pre": pre}
    tokenizer = Tokenizer.from_metadata(metadata, source=f"smollm-as-{pre}")
    assert tokenizer.encode(text, add_special=False) == expected


def test_missing_pre_tokenizer_uses_default(smollm_metadata: dict[str, Any]) -> None:
    metadata = {k: v for k, v in smollm_metadata.items() if k != "tokenizer.ggml.pre"}
    tokenizer = Tokenizer.from_metadata(metadata, source="smollm-without-pre")
    expected = [12420, 23, 100, 7209, 198, 9796]
    assert tokenizer.encode("don't\r\n\r\nstop", add_special=False) == expected


def test_unsupported_pre_tokenizer_raises(smollm_metadata: dict[str, Any]) -> None:
    metadata = {**smollm_metadata, "tokenizer.ggml.pre": "no-such-pre"}
    with pytest.raises(UnsupportedModelError, match="no-such-pre") as raised:
        Tokenizer.from_metadata(metadata, source="broken.gguf")
    assert "broken.gguf" in str(raised.value)


def test_unsupported_tokenizer_model_raises(smollm_metadata: dict[str, Any]) -> None:
    metadata = {**smollm_metadata, "tokenizer.ggml.model": "bert"}
    with pytest.raises(UnsupportedModelError, match="bert") as raised:
        Tokenizer.from_metadata(metadata, source="broken.gguf")
    assert "broken.gguf" in str(raised.value)


# A small SentencePiece-style vocabulary: <unk>, two control tokens, one user-defined token,
# the 256 byte tokens, then normal tokens with scores. "bc" outranks "▁a", which outranks "ab".
SPM_NORMAL_SCORES = {
    "\u2581": -10.0,
    "a": -11.0,
    "b": -12.0,
    "c": -13.0,
    "ab": -3.0,
    "bc": -1.0,
    "\u2581a": -2.0,
    "\u2581b": -4.0,
    "\u2581c": -5.0,
}
SPM_TOOL = "<tool>"


def spm_metadata(
    scores: dict[str, float] | None = None, add_space_prefix: bool = True
) -> dict[str, Any]:
    """Build the metadata of a ``llama`` tokenizer by hand, with SPM_NORMAL_SCORES by default."""
    if scores is None:
        scores = SPM_NORMAL_SCORES
    tokens = ["<unk>", "<s>", "</s>", SPM_TOOL]
    token_types = [2, 3, 3, 4]
    token_scores = [0.0, 0.0, 0.0, 0.0]

    tokens += [f"<0x{byte:02X}>" for byte in range(256)]
    token_types += [6] * 256
    token_scores += [0.0] * 256

    tokens += list(scores)
    token_types += [1] * len(scores)
    token_scores += list(scores.values())

    return {
        "tokenizer.ggml.model": "llama",
        "tokenizer.ggml.tokens": tokens,
        "tokenizer.ggml.scores": token_scores,
        "tokenizer.ggml.token_type": token_types,
        "tokenizer.ggml.bos_token_id": 1,
        "tokenizer.ggml.eos_token_id": 2,
        "tokenizer.ggml.unknown_token_id": 0,
        "tokenizer.ggml.add_space_prefix": add_space_prefix,
    }


# Ids in the vocabulary above.
SPM_BOS, SPM_EOS, SPM_TOOL_ID = 1, 2, 3
SPM_BYTE_BASE = 4
SPM_SPACE, SPM_A, SPM_B, SPM_C, SPM_AB, SPM_BC, SPM_SPACE_A, SPM_SPACE_B, SPM_SPACE_C = range(
    260, 269
)


@pytest.fixture(scope="module")
def spm() -> Tokenizer:
    return Tokenizer.from_metadata(spm_metadata(), source="synthetic-spm")


def test_spm_merges_follow_scores(spm: Tokenizer) -> None:
    # "▁abc": "bc" has the highest score, so it forms first, then "▁a".
    assert spm.encode("abc", add_special=False) == [SPM_SPACE_A, SPM_BC]


def test_spm_other_scores_change_merges() -> None:
    scores = {**SPM_NORMAL_SCORES, "ab": -1.0, "bc": -3.0}
    tokenizer = Tokenizer.from_metadata(spm_metadata(scores), source="synthetic-spm")
    # Now "ab" forms first, and neither "▁ab" nor "abc" is in the vocabulary.
    assert tokenizer.encode("abc", add_special=False) == [SPM_SPACE, SPM_AB, SPM_C]


def test_spm_adds_bos_by_default(spm: Tokenizer) -> None:
    assert spm.encode("a b") == [SPM_BOS, SPM_SPACE_A, SPM_SPACE_B]


def test_spm_byte_fallback_for_unknown_character(spm: Tokenizer) -> None:
    # é is C3 A9 in UTF-8 and is not in the vocabulary.
    ids = spm.encode("aé", add_special=False)
    assert ids == [SPM_SPACE_A, SPM_BYTE_BASE + 0xC3, SPM_BYTE_BASE + 0xA9]
    assert spm.decode(ids) == "aé"


def test_spm_space_prefix_after_special_token(spm: Tokenizer) -> None:
    # llama.cpp starts each piece of text after an added token with "▁".
    assert spm.encode("a<s>b", add_special=False) == [SPM_SPACE_A, SPM_BOS, SPM_SPACE_B]
    assert spm.encode("a<tool>c", add_special=False) == [SPM_SPACE_A, SPM_TOOL_ID, SPM_SPACE_C]


def test_spm_parse_special_off(spm: Tokenizer) -> None:
    ids = spm.encode("a<s>b", add_special=False, parse_special=False)
    less, s, greater = (SPM_BYTE_BASE + ord(char) for char in "<s>")
    assert ids == [SPM_SPACE_A, less, s, greater, SPM_B]
    # User-defined tokens are matched even with parse_special off.
    tool_ids = spm.encode("a<tool>c", add_special=False, parse_special=False)
    assert tool_ids == [SPM_SPACE_A, SPM_TOOL_ID, SPM_SPACE_C]


def test_spm_without_space_prefix() -> None:
    tokenizer = Tokenizer.from_metadata(
        spm_metadata(add_space_prefix=False), source="synthetic-spm"
    )
    assert tokenizer.encode("ab c", add_special=False) == [SPM_AB, SPM_SPACE_C]
    assert tokenizer.decode([SPM_SPACE_C]) == " c"


@pytest.mark.parametrize("text", ["abc", "a b c", "  cab ", "aé\u00e0 b", "c\n\ta", "🚀 ab"])
def test_spm_round_trip(spm: Tokenizer, text: str) -> None:
    assert spm.decode(spm.encode(text, add_special=False)) == text
    assert spm.decode(spm.encode(text), skip_special=True) == text


def test_spm_decode_keeps_control_text(spm: Tokenizer) -> None:
    assert spm.decode([SPM_BOS, SPM_SPACE_A, SPM_BC]) == "<s>abc"
    assert spm.decode([SPM_BOS, SPM_SPACE_A, SPM_BC, SPM_EOS], skip_special=True) == "abc"


def test_spm_stream_keeps_prefix_space_by_default(spm: Tokenizer) -> None:
    decoder = StreamDecoder(spm)
    pieces = [decoder.feed(i) for i in (SPM_SPACE_A, SPM_BYTE_BASE + 0xC3, SPM_BYTE_BASE + 0xA9)]
    assert pieces == [" a", "", "é"]
    assert decoder.flush() == ""


def test_spm_stream_matches_decode_when_stripping(spm: Tokenizer) -> None:
    ids = spm.encode("ab cé")
    decoder = StreamDecoder(spm, strip_prefix_space=True)
    text = "".join(decoder.feed(i) for i in ids) + decoder.flush()
    assert text == spm.decode(ids)


def test_spm_eog_ids(spm: Tokenizer) -> None:
    # "</s>" is both EOS and a control token with an end-of-generation text.
    assert spm.eog_ids == frozenset({SPM_EOS})


def test_missing_chat_template_raises(spm: Tokenizer) -> None:
    assert spm.chat_template is None
    with pytest.raises(ChatTemplateError, match="no chat template"):
        spm.render_chat([{"role": "user", "content": "Hi"}])
    assert issubclass(ChatTemplateError, MerError)


def test_chat_template_raise_exception() -> None:
    metadata = {
        **spm_metadata(),
        "tokenizer.chat_template": (
            "{% if messages[0]['role'] != 'user' %}"
            "{{ raise_exception('first message must come from the user') }}"
            "{% endif %}{{ bos_token }}{{ messages[0]['content'] | tojson }}"
        ),
    }
    tokenizer = Tokenizer.from_metadata(metadata, source="synthetic-spm")
    assert tokenizer.render_chat([{"role": "user", "content": "<b>"}]) == '<s>"<b>"'
    with pytest.raises(ChatTemplateError, match="must come from the user"):
        tokenizer.render_chat([{"role": "assistant", "content": "Hi"}])


def test_unsupported_tokenizer_model_in_synthetic_vocab_raises() -> None:
    metadata = {**spm_metadata(), "tokenizer.ggml.model": "t5"}
    with pytest.raises(UnsupportedModelError, match="'t5'"):
        Tokenizer.from_metadata(metadata, source="synthetic-spm")


def spm_tokens_with(token_id: int, text: str) -> list[str]:
    """Return the tokens of spm_metadata() with one token's text replaced."""
    tokens = list(spm_metadata()["tokenizer.ggml.tokens"])
    tokens[token_id] = text
    return tokens


def gpt2_metadata() -> dict[str, Any]:
    """Build the metadata of a three-token ``gpt2`` tokenizer by hand."""
    return {
        "tokenizer.ggml.model": "gpt2",
        "tokenizer.ggml.pre": "gpt-2",
        "tokenizer.ggml.tokens": ["a", "b", "ab"],
        "tokenizer.ggml.token_type": [1, 1, 1],
        "tokenizer.ggml.merges": ["a b"],
    }


def test_hand_built_gpt2_encodes() -> None:
    tokenizer = Tokenizer.from_metadata(gpt2_metadata(), source="synthetic-gpt2")
    assert tokenizer.encode("abba") == [2, 1, 0]


SPM_N_VOCAB = len(spm_metadata()["tokenizer.ggml.tokens"])

# Each case takes the metadata that a builder returns, replaces one key or adds it when it is
# absent, and gives the text that the error must contain besides the file and the key.
MALFORMED_METADATA = {
    "byte token without <0x": (
        spm_metadata, "tokenizer.ggml.tokens", spm_tokens_with(SPM_BYTE_BASE, "AB"),
        "entry 4 (str 'AB')",
    ),
    "byte token bad hex": (
        spm_metadata, "tokenizer.ggml.tokens", spm_tokens_with(SPM_BYTE_BASE + 1, "<0xZZ>"),
        "not spelled <0xNN>",
    ),
    "byte token one digit": (
        spm_metadata, "tokenizer.ggml.tokens", spm_tokens_with(SPM_BYTE_BASE + 2, "<0x7>"),
        "not spelled <0xNN>",
    ),
    "token not a string": (
        spm_metadata, "tokenizer.ggml.tokens", [b"<unk>"], "entry 0 (bytes b'<unk>')",
    ),
    "token lone surrogate": (
        spm_metadata, "tokenizer.ggml.tokens", spm_tokens_with(SPM_TOOL_ID, "<tool\udce9>"),
        "not valid UTF-8",
    ),
    "no tokens": (spm_metadata, "tokenizer.ggml.tokens", [], "is empty"),
    "scores as strings": (
        spm_metadata, "tokenizer.ggml.scores", ["x"] * SPM_N_VOCAB, "entry 0 (str 'x')",
    ),
    "scores nested": (
        spm_metadata, "tokenizer.ggml.scores", [[0.0]] * SPM_N_VOCAB, "must be a number",
    ),
    "scores as bools": (
        spm_metadata, "tokenizer.ggml.scores", [False] * SPM_N_VOCAB, "must be a number",
    ),
    "scores too few": (spm_metadata, "tokenizer.ggml.scores", [0.0] * 3, "has 3 entries"),
    "scores not an array": (spm_metadata, "tokenizer.ggml.scores", 0.0, "must be an array"),
    "token types as strings": (
        spm_metadata, "tokenizer.ggml.token_type", ["1"] * SPM_N_VOCAB,
        "must be an integer token type",
    ),
    "token types as floats": (
        spm_metadata, "tokenizer.ggml.token_type", [1.5] * SPM_N_VOCAB, "entry 0 (float 1.5)",
    ),
    "token types nested": (
        spm_metadata, "tokenizer.ggml.token_type", [[1]] * SPM_N_VOCAB,
        "must be an integer token type",
    ),
    "token types too many": (
        spm_metadata, "tokenizer.ggml.token_type", [1] * (SPM_N_VOCAB + 1), "has 270 entries",
    ),
    "token id as bool": (
        spm_metadata, "tokenizer.ggml.unknown_token_id", True, "must be an integer token id",
    ),
    "merge not a string": (
        gpt2_metadata, "tokenizer.ggml.merges", [1], "entry 0 (int 1) must be a string",
    ),
    "merge without space": (
        gpt2_metadata, "tokenizer.ggml.merges", ["ab"], "entry 0 (str 'ab') is not two tokens",
    ),
    "merges nested": (gpt2_metadata, "tokenizer.ggml.merges", [["a", "b"]], "must be a string"),
    "merges not an array": (gpt2_metadata, "tokenizer.ggml.merges", "a b", "must be an array"),
    "gpt2 token types as strings": (
        gpt2_metadata, "tokenizer.ggml.token_type", ["1", "1", "1"], "entry 0 (str '1')",
    ),
}


@pytest.mark.parametrize(
    ("build", "key", "value", "expected"), MALFORMED_METADATA.values(), ids=MALFORMED_METADATA
)
def test_malformed_metadata_names_file_and_key(
    build: Callable[[], dict[str, Any]], key: str, value: Any, expected: str
) -> None:
    metadata = {**build(), key: value}
    with pytest.raises(ModelFormatError) as raised:
        Tokenizer.from_metadata(metadata, source="broken.gguf")
    message = str(raised.value)
    assert message.startswith("broken.gguf: ")
    assert repr(key) in message
    assert expected in message


# Templates that fail at compile time or render time, with the error type that the message must
# name. The sandbox raises SecurityError for the unsafe attribute.
BROKEN_CHAT_TEMPLATES = {
    "syntax error": ("{% if %}", "TemplateSyntaxError"),
    "nesting too deep": ("{{ " + "(" * 3000 + "1" + ")" * 3000 + " }}", "RecursionError"),
    "division by zero": ("{{ 1 // 0 }}", "ZeroDivisionError"),
    "string plus int": ("{{ messages[0]['content'] + 1 }}", "TypeError"),
    "recursive macro": ("{% macro f() %}{{ f() }}{% endmacro %}{{ f() }}", "RecursionError"),
    "unsafe attribute": ("{{ ''.__class__.__mro__[1] }}", "SecurityError"),
}


@pytest.mark.parametrize(
    ("template", "error_name"), BROKEN_CHAT_TEMPLATES.values(), ids=BROKEN_CHAT_TEMPLATES
)
def test_broken_chat_template_raises(template: str, error_name: str) -> None:
    metadata = {**spm_metadata(), "tokenizer.chat_template": template}
    tokenizer = Tokenizer.from_metadata(metadata, source="broken.gguf")
    with pytest.raises(ChatTemplateError) as raised:
        tokenizer.render_chat([{"role": "user", "content": "Hi"}])
    message = str(raised.value)
    assert message.startswith("broken.gguf: ")
    assert "tokenizer.chat_template" in message
    assert error_name in message


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("caf\udce9", "byte 0xE9 at character offset 3 is not part of a UTF-8 character"),
        ("ok \ud800 then", "character offset 3 is the lone surrogate U+D800"),
    ],
    ids=["surrogate escape", "lone surrogate"],
)
def test_encode_invalid_utf8_raises(spm: Tokenizer, text: str, expected: str) -> None:
    with pytest.raises(ValueError) as raised:
        spm.encode(text)
    message = str(raised.value)
    assert message.startswith("text is not valid UTF-8: ")
    assert expected in message


def test_encode_bytes_raises_type_error(spm: Tokenizer) -> None:
    with pytest.raises(TypeError, match="text must be a str, got bytes"):
        spm.encode(b"abc")  # type: ignore[arg-type]
