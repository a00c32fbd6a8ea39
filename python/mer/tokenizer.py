"""Tokenizer of a GGUF model, built from the file's ``tokenizer.*`` metadata.

This module owns the conversion between text and token ids, and chat-template rendering. It
reproduces llama.cpp's tokenization for the two tokenizer models that llama-architecture GGUF
files use:

* ``gpt2``: byte-level BPE with the file's merges. The text is first split by the sequence of
  regexes that ``tokenizer.ggml.pre`` selects.
* ``llama``: SentencePiece-style BPE whose merges are ranked by token score, with fallback to the
  ``<0xNN>`` byte tokens for characters missing from the vocabulary.

Hugging Face ``tokenizers`` does the encoding. Decoding is done here from the bytes of each token,
so that `Tokenizer.decode`, `Tokenizer.token_bytes` and `StreamDecoder` agree byte for byte.
Reading the GGUF file is left to the caller, which passes the metadata as a plain mapping.
"""

from __future__ import annotations

import codecs
import enum
import json
import logging
import numbers
import operator
import re
import reprlib
import threading
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, NoReturn

import jinja2
import jinja2.sandbox
from tokenizers import AddedToken, Regex, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from .errors import MerError, ModelFormatError, UnsupportedModelError

logger = logging.getLogger("mer")

__all__ = ["ChatTemplateError", "StreamDecoder", "Tokenizer", "TokenType", "validate_utf8"]


class ChatTemplateError(MerError):
    """The model has no chat template, or its template failed to render."""


class TokenType(enum.IntEnum):
    """Token type: the values of ``tokenizer.ggml.token_type``, as llama.cpp numbers them."""

    UNDEFINED = 0
    NORMAL = 1
    UNKNOWN = 2
    CONTROL = 3
    USER_DEFINED = 4
    UNUSED = 5
    BYTE = 6


# llama.cpp matches these types in the raw text before the tokenizer model runs. It matches
# user-defined tokens always, and control and unknown tokens only when parse_special is set.
_ADDED_TYPES = frozenset({TokenType.CONTROL, TokenType.USER_DEFINED, TokenType.UNKNOWN})
_SPECIAL_TYPES = frozenset({TokenType.CONTROL, TokenType.UNKNOWN})

# Texts of control tokens that end generation, from llama.cpp's list in llama-vocab.cpp.
# Unlike llama.cpp, a token of another type with one of these texts is left alone, because in
# some vocabularies "</s>" is plain text.
_EOG_TEXTS = frozenset(
    {
        "<|eot_id|>",
        "<|im_end|>",
        "<|end|>",
        "<end_of_turn>",
        "<|endoftext|>",
        "<EOT>",
        "</s>",
        "<|eom_id|>",
    }
)

_SPM_SPACE = "\u2581"  # "▁", SentencePiece's visible space


# Pre-tokenizer regexes, as in llama.cpp's llm_tokenizer_bpe. The onig engine of `tokenizers`
# reads \p{L}, \p{N} and \s with the same Unicode meaning as llama.cpp's own matcher.
_GPT2_REGEX = r"'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)"
_LLAMA3_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_REGEX = (
    r"(?:'[sS]|'[tT]|'[rR][eE]|'[vV][eE]|'[mM]|'[lL][lL]|'[dD])"
    r"|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_DEFAULT_REGEXES = (
    r"[\p{P}\$\+<=>\^~\|]+",
    _GPT2_REGEX,
    r"\p{N}+",
    r"[0-9][0-9][0-9]",
)


@dataclass(frozen=True)
class _BpeVariant:
    """Settings that llama.cpp applies to the ``gpt2`` model for one family of pre-tokenizers."""

    regexes: tuple[str, ...]
    # A pre-token that is itself in the vocabulary becomes one token without running the merges.
    ignore_merges: bool = False
    # Value of add_bos_token when the metadata does not set it.
    add_bos: bool = False


_LLAMA3 = _BpeVariant((_LLAMA3_REGEX,), ignore_merges=True, add_bos=True)
_LLAMA3_REGEX_ONLY = _BpeVariant((_LLAMA3_REGEX,))
_STARCODER = _BpeVariant((r"\p{N}", _GPT2_REGEX))
_GPT2 = _BpeVariant((_GPT2_REGEX,))
_QWEN2 = _BpeVariant((_QWEN2_REGEX,))

# Keys are values of tokenizer.ggml.pre. Every name that llama.cpp maps to the same
# pre-tokenizer shares one entry.
_BPE_VARIANTS: dict[str, _BpeVariant] = {
    "default": _BpeVariant(_DEFAULT_REGEXES),
    "llama3": _LLAMA3,
    "llama-v3": _LLAMA3,
    "llama-bpe": _LLAMA3,
    "falcon3": _LLAMA3,
    "dbrx": _LLAMA3_REGEX_ONLY,
    "smaug-bpe": _LLAMA3_REGEX_ONLY,
    "smollm": _STARCODER,
    "starcoder": _STARCODER,
    "refact": _STARCODER,
    "command-r": _STARCODER,
    "codeshell": _STARCODER,
    "exaone": _STARCODER,
    "minerva-7b": _STARCODER,
    "gpt-2": _GPT2,
    "phi-2": _GPT2,
    "mpt": _GPT2,
    "olmo": _GPT2,
    "jais": _GPT2,
    "qwen2": _QWEN2,
    "megrez": _QWEN2,
    "stablelm2": _QWEN2,
}


def _gpt2_unicode_to_byte() -> dict[str, int]:
    """Build the inverse of GPT-2's byte-to-unicode table.

    GPT-2 stores every byte as a printable character: the printable Latin-1 bytes stand for
    themselves, and the other bytes, in increasing order, become U+0100, U+0101 and so on.
    """
    printable = [*range(0x21, 0x7F), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table = {chr(byte): byte for byte in printable}
    next_code_point = 0x100
    for byte in range(256):
        if byte not in printable:
            table[chr(next_code_point)] = byte
            next_code_point += 1
    return table


_GPT2_UNICODE_TO_BYTE = _gpt2_unicode_to_byte()

# Spelling of a llama tokenizer's byte tokens, such as "<0x0A>".
_BYTE_TOKEN = re.compile(r"<0x([0-9A-Fa-f]{2})>")


def _first_non_utf8_offset(text: str) -> int | None:
    """Return the offset of the first character that UTF-8 cannot encode, or None.

    Only surrogates (U+D800 to U+DFFF) are such characters. Python decodes undecodable bytes
    with ``errors="surrogateescape"``, for example in ``sys.argv``, into U+DC80 to U+DCFF.
    """
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as error:
        return error.start
    return None


def validate_utf8(text: str, name: str) -> None:
    """Raise ValueError unless ``text`` can be encoded as UTF-8, which fails only for surrogates.

    The message starts with ``name`` and gives the offset of the first surrogate, and for a
    surrogate escape the byte that it replaced. Raises TypeError when ``text`` is not a str.
    """
    if not isinstance(text, str):
        raise TypeError(f"{name} must be a str, got {type(text).__name__}")
    offset = _first_non_utf8_offset(text)
    if offset is None:
        return

    code_point = ord(text[offset])
    if 0xDC80 <= code_point <= 0xDCFF:
        problem = (
            f"byte 0x{code_point - 0xDC00:02X} at character offset {offset} "
            "is not part of a UTF-8 character"
        )
    else:
        problem = f"character offset {offset} is the lone surrogate U+{code_point:04X}"
    raise ValueError(f"{name} is not valid UTF-8: {problem}. Convert the text to UTF-8 first.")


def _as_integer(value: Any) -> int | None:
    """Return ``value`` as an int, or None when it is not an integer. A bool is not one."""
    if isinstance(value, bool):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


class _Metadata:
    """Typed access to the GGUF metadata mapping, with errors that name the key and the file."""

    def __init__(self, metadata: Mapping[str, Any], source: str) -> None:
        self._metadata = metadata
        self.source = source

    def fail(self, key: str, problem: str) -> NoReturn:
        raise ModelFormatError(f"{self.source}: metadata key {key!r} {problem}")

    def has(self, key: str) -> bool:
        return key in self._metadata

    def string(self, key: str, default: str | None = None) -> str | None:
        value = self._metadata.get(key, default)
        if value is not None and not isinstance(value, str):
            self.fail(key, f"must be a string, got {type(value).__name__} {value!r}")
        return value

    def boolean(self, key: str, default: bool) -> bool:
        value = self._metadata.get(key, default)
        if not isinstance(value, (bool, int)):
            self.fail(key, f"must be a bool, got {type(value).__name__} {value!r}")
        return bool(value)

    def token_id(self, key: str, n_vocab: int, default: int | None = None) -> int | None:
        value = self._metadata.get(key, default)
        if value is None:
            return None
        token_id = _as_integer(value)
        if token_id is None:
            self.fail(key, f"must be an integer token id, got {type(value).__name__} {value!r}")
        if not 0 <= token_id < n_vocab:
            self.fail(key, f"is {token_id}, outside the vocabulary of {n_vocab} tokens")
        return token_id

    def fail_entry(self, key: str, index: int, value: Any, problem: str) -> NoReturn:
        # reprlib shortens a long value, such as a nested array, to a readable length.
        self.fail(key, f"entry {index} ({type(value).__name__} {reprlib.repr(value)}) {problem}")

    def array(self, key: str, length: int | None = None) -> list[Any]:
        if key not in self._metadata:
            self.fail(key, "is missing")
        value = self._metadata[key]
        if hasattr(value, "tolist"):
            value = value.tolist()  # a NumPy array, as some GGUF readers return
        if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
            self.fail(key, f"must be an array, got {type(value).__name__}")
        if length is not None and len(value) != length:
            self.fail(key, f"has {len(value)} entries, but tokenizer.ggml.tokens has {length}")
        return list(value)


class Tokenizer:
    """Text-to-token conversion of one GGUF model, matching llama.cpp's ``llama_tokenize``.

    Build one with `Tokenizer.from_metadata`. The instance is safe to share between threads.
    """

    def __init__(
        self,
        *,
        backend: HFTokenizer,
        tokens: list[str],
        token_types: list[TokenType],
        pieces: list[bytes],
        bos_id: int | None,
        eos_id: int | None,
        eog_ids: frozenset[int],
        add_bos: bool,
        add_eos: bool,
        strips_prefix_space: bool,
        chat_template: str | None,
        source: str,
    ) -> None:
        self._backend = backend
        self._tokens = tokens
        self._token_types = token_types
        self._pieces = pieces
        self._bos_id = bos_id
        self._eos_id = eos_id
        self._eog_ids = eog_ids
        self._add_bos = add_bos
        self._add_eos = add_eos
        self._strips_prefix_space = strips_prefix_space
        self._chat_template = chat_template
        self._source = source
        self._compiled_template: jinja2.Template | None = None
        # encode() flips the backend's encode_special_tokens flag for each call.
        self._backend_lock = threading.Lock()

    @classmethod
    def from_metadata(cls, metadata: Mapping[str, Any], source: str = "<model>") -> Tokenizer:
        """Build the tokenizer from GGUF metadata.

        ``metadata`` maps GGUF keys to plain Python values, with arrays as lists. ``source``
        names the model file in error messages. Raises `UnsupportedModelError` for a tokenizer
        model or pre-tokenizer that MER lacks, and `ModelFormatError` for missing or invalid keys.
        """
        meta = _Metadata(metadata, source)

        model = meta.string("tokenizer.ggml.model")
        if model is None:
            meta.fail("tokenizer.ggml.model", "is missing")
        if model not in ("gpt2", "llama"):
            raise UnsupportedModelError(
                f"{source}: tokenizer model {model!r} (tokenizer.ggml.model) is not supported; "
                "MER supports 'gpt2' and 'llama'"
            )

        tokens = _read_tokens(meta)
        n_vocab = len(tokens)
        token_types = _read_token_types(meta, n_vocab)
        vocab = {text: token_id for token_id, text in enumerate(tokens)}

        if model == "gpt2":
            variant = _bpe_variant(meta)
            backend = _build_gpt2_backend(meta, vocab, variant)
            default_bos, default_eos, default_add_bos = None, None, variant.add_bos
            strips_prefix_space = False
        else:
            add_space_prefix = meta.boolean("tokenizer.ggml.add_space_prefix", True)
            unk_id = meta.token_id("tokenizer.ggml.unknown_token_id", n_vocab)
            backend = _build_spm_backend(meta, tokens, token_types, vocab, add_space_prefix, unk_id)
            default_bos, default_eos, default_add_bos = 1, 2, True
            strips_prefix_space = add_space_prefix

        _add_special_tokens(backend, tokens, token_types)

        bos_id = meta.token_id("tokenizer.ggml.bos_token_id", n_vocab, default_bos)
        eos_id = meta.token_id("tokenizer.ggml.eos_token_id", n_vocab, default_eos)
        add_bos = meta.boolean("tokenizer.ggml.add_bos_token", default_add_bos)
        add_eos = meta.boolean("tokenizer.ggml.add_eos_token", False)
        if add_bos and bos_id is None:
            meta.fail("tokenizer.ggml.bos_token_id", "is missing, but add_bos_token is true")
        if add_eos and eos_id is None:
            meta.fail("tokenizer.ggml.eos_token_id", "is missing, but add_eos_token is true")

        eog_ids = _read_eog_ids(meta, tokens, token_types, eos_id)
        pieces = [
            _token_piece(meta, token_id, text, kind, model)
            for token_id, (text, kind) in enumerate(zip(tokens, token_types))
        ]

        return cls(
            backend=backend,
            tokens=tokens,
            token_types=token_types,
            pieces=pieces,
            bos_id=bos_id,
            eos_id=eos_id,
            eog_ids=eog_ids,
            add_bos=add_bos,
            add_eos=add_eos,
            strips_prefix_space=strips_prefix_space,
            chat_template=meta.string("tokenizer.chat_template"),
            source=source,
        )

    @property
    def n_vocab(self) -> int:
        """Number of tokens in the vocabulary."""
        return len(self._tokens)

    @property
    def bos_id(self) -> int | None:
        """Id of the beginning-of-sequence token, or None when the model has none."""
        return self._bos_id

    @property
    def eos_id(self) -> int | None:
        """Id of the end-of-sequence token, or None when the model has none."""
        return self._eos_id

    @property
    def eog_ids(self) -> frozenset[int]:
        """Ids of the tokens that end generation: EOS, EOT, EOM and the known end-of-turn tokens."""
        return self._eog_ids

    @property
    def chat_template(self) -> str | None:
        """Jinja source of ``tokenizer.chat_template``, or None when the model has none."""
        return self._chat_template

    def encode(self, text: str, add_special: bool = True, parse_special: bool = True) -> list[int]:
        """Convert ``text`` to token ids.

        With ``add_special``, BOS and EOS are added as the model's ``add_bos_token`` and
        ``add_eos_token`` request. With ``parse_special``, the text of a control token such as
        "<|im_end|>" becomes that token. Without it, such text is tokenized as plain text.
        User-defined tokens are matched in either case, as llama.cpp does. Raises ValueError when
        ``text`` is not valid UTF-8, such as a string with surrogate escapes from ``sys.argv``.
        """
        validate_utf8(text, "text")
        with self._backend_lock:
            self._backend.encode_special_tokens = not parse_special
            ids = self._backend.encode(text, add_special_tokens=False).ids

        if add_special and self._add_bos:
            ids.insert(0, self._bos_id)
        if add_special and self._add_eos:
            ids.append(self._eos_id)
        return ids

    def token_bytes(self, token_id: int) -> bytes:
        """Return the raw bytes of one token, which may be part of a UTF-8 character.

        A control token returns its text. An unused token returns no bytes, as in llama.cpp.
        """
        return self._pieces[self._check_id(token_id)]

    def decode(self, ids: Iterable[int], skip_special: bool = False) -> str:
        """Convert token ids to text.

        ``skip_special`` drops control and unknown tokens. For a ``llama`` tokenizer that adds a
        space prefix, the space in front of the first token after BOS is removed again. Bytes that
        are not valid UTF-8 become U+FFFD. Unlike llama.cpp's ``llama_detokenize``, no spaces
        before punctuation are removed, so decoding exactly inverts encoding.
        """
        stream = StreamDecoder(self, skip_special=skip_special, strip_prefix_space=True)
        parts = [stream.feed(token_id) for token_id in ids]
        parts.append(stream.flush())
        return "".join(parts)

    def render_chat(
        self,
        messages: list[dict[str, Any]],
        add_generation_prompt: bool = True,
        **variables: Any,
    ) -> str:
        """Render ``messages`` with the model's chat template into a prompt string.

        Each message is a dict such as ``{"role": "user", "content": "Hi"}``. The template gets
        ``messages``, ``add_generation_prompt``, ``bos_token``, ``eos_token`` and any extra
        ``variables`` (for example ``tools``), as in Hugging Face ``apply_chat_template``. The
        result is meant for `encode` with ``add_special=False`` when the template writes BOS.
        Raises `ChatTemplateError` when the model has no template or rendering fails.
        """
        template = self._compile_chat_template()
        context = {
            "bos_token": self._token_text(self._bos_id),
            "eos_token": self._token_text(self._eos_id),
            **variables,
            "messages": messages,
            "add_generation_prompt": add_generation_prompt,
        }
        # NOTE: the sandbox sets no time or memory limit, so a template that loops for a very
        # long time blocks this call.
        try:
            return template.render(context)
        except ChatTemplateError:
            raise  # from raise_exception() in the template, whose message names the source
        except Exception as error:
            # The template comes from the model file and is untrusted, so every error that
            # rendering raises, such as ZeroDivisionError or RecursionError, becomes this one.
            raise ChatTemplateError(
                f"{self._source}: rendering tokenizer.chat_template failed: "
                f"{type(error).__name__}: {error}"
            ) from error

    def _check_id(self, token_id: int) -> int:
        index = operator.index(token_id)
        if not 0 <= index < len(self._pieces):
            raise ValueError(
                f"token id {index} is outside the vocabulary of {len(self._pieces)} tokens"
            )
        return index

    def _token_text(self, token_id: int | None) -> str:
        return "" if token_id is None else self._tokens[token_id]

    def _compile_chat_template(self) -> jinja2.Template:
        if self._compiled_template is not None:
            return self._compiled_template
        if self._chat_template is None:
            raise ChatTemplateError(
                f"{self._source}: the model has no chat template (metadata key "
                "'tokenizer.chat_template' is missing); format the prompt yourself and "
                "call encode()"
            )

        source = self._source

        def raise_exception(message: str) -> NoReturn:
            raise ChatTemplateError(f"{source}: the chat template raised an error: {message}")

        def tojson(value: Any, indent: int | None = None, **kwargs: Any) -> str:
            # jinja2's own tojson escapes <, > and & for HTML, which would change the prompt.
            return json.dumps(value, ensure_ascii=False, indent=indent, **kwargs)

        def strftime_now(format_string: str) -> str:
            return datetime.now().strftime(format_string)

        # These settings follow Hugging Face transformers' apply_chat_template, which the
        # templates in GGUF files are written for.
        environment = jinja2.sandbox.ImmutableSandboxedEnvironment(
            trim_blocks=True,
            lstrip_blocks=True,
            extensions=["jinja2.ext.loopcontrols"],
        )
        environment.filters["tojson"] = tojson
        environment.globals["raise_exception"] = raise_exception
        environment.globals["strftime_now"] = strftime_now
        try:
            self._compiled_template = environment.from_string(self._chat_template)
        except Exception as error:
            # Besides syntax errors, deeply nested expressions raise RecursionError here.
            raise ChatTemplateError(
                f"{self._source}: tokenizer.chat_template is not a valid Jinja template: "
                f"{type(error).__name__}: {error}"
            ) from error
        return self._compiled_template


class StreamDecoder:
    """Incremental decoder that turns token ids, fed one at a time, into text.

    A UTF-8 character split across tokens is held back until its last byte arrives, so no
    returned piece ends inside a character. Call `flush` at the end. It returns the held bytes,
    with U+FFFD for an incomplete character.
    """

    def __init__(
        self,
        tokenizer: Tokenizer,
        *,
        skip_special: bool = False,
        strip_prefix_space: bool = False,
    ) -> None:
        """Start a decoder for ids of ``tokenizer``.

        ``skip_special`` drops control and unknown tokens. ``strip_prefix_space`` removes the
        space that a ``llama`` tokenizer's space prefix put in front of the first token after BOS,
        as `Tokenizer.decode` does. Leave it False when the ids continue a prompt, because there
        that space separates two words.
        """
        self._tokenizer = tokenizer
        self._skip_special = skip_special
        self._strip_pending = strip_prefix_space and tokenizer._strips_prefix_space
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")

    def feed(self, token_id: int) -> str:
        """Add one token and return the text completed by it, which may be empty."""
        tokenizer = self._tokenizer
        index = tokenizer._check_id(token_id)
        piece = tokenizer._pieces[index]

        if self._strip_pending and index != tokenizer._bos_id:
            self._strip_pending = False
            if piece.startswith(b" "):
                piece = piece[1:]
        if self._skip_special and tokenizer._token_types[index] in _SPECIAL_TYPES:
            return ""
        return self._utf8.decode(piece)

    def flush(self) -> str:
        """Return the bytes still held, with U+FFFD for an incomplete character."""
        return self._utf8.decode(b"", final=True)


def _read_tokens(meta: _Metadata) -> list[str]:
    key = "tokenizer.ggml.tokens"
    tokens = meta.array(key)
    if not tokens:
        meta.fail(key, "is empty")
    seen: dict[str, int] = {}
    for token_id, text in enumerate(tokens):
        if not isinstance(text, str):
            meta.fail_entry(key, token_id, text, "must be a string")
        if _first_non_utf8_offset(text) is not None:
            meta.fail_entry(key, token_id, text, "is not valid UTF-8")
        if not text:
            # llama.cpp gives empty tokens the same placeholder text.
            text = f"[EMPTY_{token_id}]"
            tokens[token_id] = text
        if text in seen:
            meta.fail(key, f"has the token {text!r} twice, at ids {seen[text]} and {token_id}")
        seen[text] = token_id
    return tokens


def _read_token_types(meta: _Metadata, n_vocab: int) -> list[TokenType]:
    key = "tokenizer.ggml.token_type"
    if not meta.has(key):
        return [TokenType.NORMAL] * n_vocab
    token_types = []
    for token_id, value in enumerate(meta.array(key, n_vocab)):
        number = _as_integer(value)
        if number is None:
            meta.fail_entry(key, token_id, value, "must be an integer token type")
        try:
            token_types.append(TokenType(number))
        except ValueError:
            # llama.cpp treats an unknown type as undefined, which decodes to nothing.
            logger.debug("token %d has unknown token type %r", token_id, value)
            token_types.append(TokenType.UNDEFINED)
    return token_types


def _read_eog_ids(
    meta: _Metadata, tokens: list[str], token_types: list[TokenType], eos_id: int | None
) -> frozenset[int]:
    eog_ids = set()
    if eos_id is not None:
        eog_ids.add(eos_id)
    for key in ("tokenizer.ggml.eot_token_id", "tokenizer.ggml.eom_token_id"):
        token_id = meta.token_id(key, len(tokens))
        if token_id is not None:
            eog_ids.add(token_id)
    for token_id, text in enumerate(tokens):
        if token_types[token_id] == TokenType.CONTROL and text in _EOG_TEXTS:
            eog_ids.add(token_id)
    return frozenset(eog_ids)


def _bpe_variant(meta: _Metadata) -> _BpeVariant:
    pre = meta.string("tokenizer.ggml.pre")
    if pre is None:
        logger.warning(
            "%s: tokenizer.ggml.pre is missing, so the 'default' pre-tokenizer is used; "
            "tokenization may differ from the original model",
            meta.source,
        )
        pre = "default"
    variant = _BPE_VARIANTS.get(pre)
    if variant is None:
        raise UnsupportedModelError(
            f"{meta.source}: pre-tokenizer {pre!r} (tokenizer.ggml.pre) is not supported; "
            f"supported values: {', '.join(sorted(_BPE_VARIANTS))}"
        )
    return variant


def _build_gpt2_backend(
    meta: _Metadata, vocab: dict[str, int], variant: _BpeVariant
) -> HFTokenizer:
    merges: list[tuple[str, str]] = []
    seen: set[tuple[str, str]] = set()
    n_unusable = 0
    key = "tokenizer.ggml.merges"
    for rank, line in enumerate(meta.array(key)):
        if not isinstance(line, str):
            meta.fail_entry(key, rank, line, "must be a string")
        # llama.cpp splits at the first space after the first character.
        split = line.find(" ", 1)
        if split < 0:
            meta.fail_entry(key, rank, line, "is not two tokens separated by a space")
        pair = (line[:split], line[split + 1 :])
        if pair in seen:
            continue  # llama.cpp keeps the rank of the first occurrence.
        if pair[0] not in vocab or pair[1] not in vocab or pair[0] + pair[1] not in vocab:
            n_unusable += 1
            continue
        seen.add(pair)
        merges.append(pair)
    if n_unusable:
        logger.debug(
            "%s: ignored %d merges with tokens outside the vocabulary", meta.source, n_unusable
        )

    backend = HFTokenizer(models.BPE(vocab, merges, ignore_merges=variant.ignore_merges))
    splits = [
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False)
        for regex in variant.regexes
    ]
    backend.pre_tokenizer = pre_tokenizers.Sequence(
        [*splits, pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)]
    )
    return backend


def _build_spm_backend(
    meta: _Metadata,
    tokens: list[str],
    token_types: list[TokenType],
    vocab: dict[str, int],
    add_space_prefix: bool,
    unk_id: int | None,
) -> HFTokenizer:
    merges = _spm_merges(tokens, token_types, _read_scores(meta, len(tokens)), vocab)

    if unk_id is None:
        unk_id = next((i for i, kind in enumerate(token_types) if kind == TokenType.UNKNOWN), None)
    has_byte_tokens = any(kind == TokenType.BYTE for kind in token_types)
    model = models.BPE(
        vocab,
        merges,
        unk_token=None if unk_id is None else tokens[unk_id],
        byte_fallback=has_byte_tokens,
    )
    backend = HFTokenizer(model)

    # llama.cpp puts the prefix space in front of the text and after every added token, and
    # the backend's normalizer runs once for each piece between added tokens, which matches.
    replace = normalizers.Replace(" ", _SPM_SPACE)
    if add_space_prefix:
        backend.normalizer = normalizers.Sequence([normalizers.Prepend(_SPM_SPACE), replace])
    else:
        backend.normalizer = replace
    return backend


def _read_scores(meta: _Metadata, n_vocab: int) -> list[float]:
    key = "tokenizer.ggml.scores"
    scores = []
    for token_id, value in enumerate(meta.array(key, n_vocab)):
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            meta.fail_entry(key, token_id, value, "must be a number")
        scores.append(float(value))
    return scores


def _spm_merges(
    tokens: list[str],
    token_types: list[TokenType],
    scores: list[float],
    vocab: dict[str, int],
) -> list[tuple[str, str]]:
    """Derive BPE merges from SentencePiece scores.

    llama.cpp's SPM tokenizer repeatedly joins the adjacent pair whose concatenation is the
    vocabulary token with the highest score. The same result comes from one merge for every
    way to split a token into two vocabulary tokens, ranked by the score of the whole token.
    """
    ranked: list[tuple[float, int, int]] = []
    for token_id, text in enumerate(tokens):
        # Only normal and user-defined tokens are built from plain text. llama.cpp also builds
        # control tokens, so "<s>" typed by a user could become BOS even without parse_special.
        if token_types[token_id] not in (TokenType.NORMAL, TokenType.USER_DEFINED):
            continue
        for split in range(1, len(text)):
            if text[:split] in vocab and text[split:] in vocab:
                ranked.append((-scores[token_id], token_id, split))

    # NOTE: llama.cpp breaks a tie between equal scores by position (leftmost pair first),
    # while BPE breaks it by rank, here the token id. Vocabularies with repeated scores can
    # therefore tokenize differently from llama.cpp.
    ranked.sort()
    return [(tokens[token_id][:split], tokens[token_id][split:]) for _, token_id, split in ranked]


def _add_special_tokens(
    backend: HFTokenizer, tokens: list[str], token_types: list[TokenType]
) -> None:
    special: list[AddedToken] = []
    user_defined: list[AddedToken] = []
    for text, kind in zip(tokens, token_types):
        if kind not in _ADDED_TYPES:
            continue
        is_special = kind in _SPECIAL_TYPES
        # normalized=False matches the raw text, as llama.cpp does before any normalization.
        added = AddedToken(text, special=is_special, normalized=False)
        (special if is_special else user_defined).append(added)
    backend.add_special_tokens(special)
    backend.add_tokens(user_defined)


def _token_piece(meta: _Metadata, token_id: int, text: str, kind: TokenType, model: str) -> bytes:
    """Return the bytes that one token decodes to, following llama.cpp's token_to_piece."""
    if kind in _ADDED_TYPES:
        return text.encode("utf-8")
    if kind == TokenType.NORMAL and model == "gpt2":
        return _gpt2_token_bytes(text)
    if kind == TokenType.NORMAL:
        return text.replace(_SPM_SPACE, " ").encode("utf-8")
    if kind == TokenType.BYTE and model == "llama":
        match = _BYTE_TOKEN.fullmatch(text)
        if match is None:
            meta.fail_entry(
                "tokenizer.ggml.tokens",
                token_id,
                text,
                "has token type BYTE (6) in tokenizer.ggml.token_type, but is not spelled <0xNN>",
            )
        return bytes([int(match[1], 16)])
    return b""


def _gpt2_token_bytes(text: str) -> bytes:
    out = bytearray()
    for char in text:
        byte = _GPT2_UNICODE_TO_BYTE.get(char)
        if byte is None:
            # Not a GPT-2 byte character, so the vocabulary spells it as itself.
            out += char.encode("utf-8")
        else:
            out.append(byte)
    return bytes(out)
