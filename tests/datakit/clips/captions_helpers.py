"""Test helpers for the captioners: a tiny random Qwen2.5-VL saved like a real checkpoint, and a local
chat-completions server.

No Qwen tokenizer files exist offline, so the tokenizer is a small BPE trained here on a few sentences,
plus Qwen's special tokens, wrapped as a ``Qwen2TokenizerFast`` and saved beside the model with a Qwen
style chat template; the model reloads through the real ``from_pretrained(..., local_files_only=True)``.
"""

from __future__ import annotations

import base64
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

SPECIAL = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

#: Qwen2-VL's chat template, reduced to what a caption request uses (system, user text/video/image parts).
CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for part in message['content'] %}"
    "{% if part['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif part['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif part['type'] == 'text' %}{{ part['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

SENTENCES = [
    "A man in a dark suit speaks to the camera in an office.",
    "A woman with long hair smiles and turns her head to the left.",
    "The camera slowly pans across a street while two people talk.",
    "Close-up of a person wearing glasses, static camera, indoor lighting.",
    "Describe the people, their clothing, actions, the scene and the camera.",
]


def _tiny_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    bpe = Tokenizer(models.BPE(unk_token=None))
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
    )
    bpe.train_from_iterator(SENTENCES * 4, trainer=trainer)
    tokenizer = Qwen2TokenizerFast(
        tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>", unk_token=None, bos_token=None
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer


def make_tiny_qwen_vl(folder: Path, family: str = "qwen2_5_vl") -> Path:
    """Save a random, tiny Qwen-VL (model, tokenizer, processor) of ``family`` (qwen2_5_vl | qwen3_vl)."""
    import torch
    import transformers as tf

    folder.mkdir(parents=True, exist_ok=True)
    tokenizer = _tiny_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL}
    text = {
        "vocab_size": len(tokenizer),
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
        "max_position_embeddings": 4096,
        "pad_token_id": ids["<|endoftext|>"],
    }
    vision = {"depth": 2, "hidden_size": 32, "intermediate_size": 64, "num_heads": 2, "out_hidden_size": 64}
    tokens = {
        "image_token_id": ids["<|image_pad|>"],
        "video_token_id": ids["<|video_pad|>"],
        "vision_start_token_id": ids["<|vision_start|>"],
        "vision_end_token_id": ids["<|vision_end|>"],
    }
    if family == "qwen2_5_vl":  # head_dim 16: mrope_section sums to 8
        text["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]}
        vision.update(window_size=56, fullatt_block_indexes=[1])
        config = tf.Qwen2_5_VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, processor_cls, video_cls, patch = (
            tf.Qwen2_5_VLForConditionalGeneration,
            tf.Qwen2_5_VLProcessor,
            tf.Qwen2VLVideoProcessor,
            14,
        )
    elif family == "qwen3_vl":
        text.update(head_dim=16)
        text["rope_parameters"] = {
            "rope_type": "default",
            "rope_theta": 10000.0,
            "mrope_section": [4, 2, 2],
            "mrope_interleaved": True,
        }
        vision.update(num_position_embeddings=64, deepstack_visual_indexes=[1])
        config = tf.Qwen3VLConfig(text_config=text, vision_config=vision, **tokens)
        model_cls, processor_cls, video_cls, patch = (
            tf.Qwen3VLForConditionalGeneration,
            tf.Qwen3VLProcessor,
            tf.Qwen3VLVideoProcessor,
            16,
        )
    else:
        raise ValueError(family)
    torch.manual_seed(0)  # the same random weights, hence the same (meaningless) text, on every run
    model = model_cls(config)
    model.generation_config.eos_token_id = ids["<|im_end|>"]
    model.generation_config.pad_token_id = ids["<|endoftext|>"]
    model.save_pretrained(folder)
    pixels = {"shortest_edge": (2 * patch) ** 2, "longest_edge": (2 * patch) ** 2 * 16}
    processor = processor_cls(
        image_processor=tf.Qwen2VLImageProcessor(size=pixels, patch_size=patch),
        video_processor=video_cls(size=pixels, patch_size=patch),
        tokenizer=tokenizer,
        chat_template=CHAT_TEMPLATE,
    )
    processor.save_pretrained(folder)
    return folder


class ChatServer:
    """A local OpenAI-compatible ``/v1/chat/completions`` server in a thread.

    ``behaviour(request_json) -> ("ok", text) | ("error", status) | ("sleep", seconds)`` decides each
    answer; every request is recorded in ``requests``.
    """

    def __init__(self, behaviour) -> None:
        self.behaviour = behaviour
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # quiet test output
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                with outer.lock:
                    outer.requests.append({"body": body, "auth": self.headers.get("Authorization")})
                kind, value = outer.behaviour(body)
                if kind == "sleep":
                    time.sleep(value)
                    kind, value = "ok", "too late"
                if kind == "error":
                    self._send(value, {"error": {"message": "server error", "type": "internal"}})
                    return
                self._send(
                    200,
                    {
                        "id": "chatcmpl-test",
                        "object": "chat.completion",
                        "model": body.get("model"),
                        "choices": [
                            {"index": 0, "message": {"role": "assistant", "content": value}, "finish_reason": "stop"}
                        ],
                    },
                )

            def _send(self, status: int, payload: dict) -> None:
                data = json.dumps(payload).encode()
                try:
                    self.send_response(status)
                    self.send_header("Content-Type", "application/json")
                    self.send_header("Content-Length", str(len(data)))
                    self.end_headers()
                    self.wfile.write(data)
                except (BrokenPipeError, ConnectionResetError):  # the client gave up (timeout case)
                    pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/v1"

    def __enter__(self) -> ChatServer:
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.server.shutdown()
        self.server.server_close()


def request_text(body: dict) -> str:
    """The text parts of a chat-completions request (the prompt)."""
    parts = [p for m in body["messages"] for p in (m["content"] if isinstance(m["content"], list) else [])]
    return " ".join(p.get("text", "") for p in parts if p.get("type") == "text")


def request_images(body: dict) -> list[bytes]:
    """The JPEG bytes of every image part of a request."""
    out = []
    for m in body["messages"]:
        for p in m["content"] if isinstance(m["content"], list) else []:
            if p.get("type") == "image_url":
                out.append(base64.b64decode(p["image_url"]["url"].split(",", 1)[1]))
    return out
