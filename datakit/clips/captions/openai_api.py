"""``openai``: any OpenAI-compatible chat-completions server (vLLM serving Qwen2.5-VL is the common case).

Each clip is one request: the prompt and the clip's sampled frames as base64 JPEG ``image_url`` parts,
greedy (temperature 0). Requests of a batch run on ``concurrency`` threads (the work is I/O); a request
that times out, or answers 429 / 5xx, or drops the connection is retried with exponential backoff, and
after ``retries`` retries that clip fails alone (the others of the batch keep their captions).
Standard library only (urllib). vLLM needs ``--limit-mm-per-prompt '{"image": N}'`` with N >= the
frame count.
"""

from __future__ import annotations

import base64
import io
import json
import os
import time
import urllib.error
import urllib.request
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

from datakit.clips.captions.base import ClipFrames
from datakit.clips.captions.prompts import get_prompt

RETRY_STATUS = frozenset({408, 409, 425, 429, 500, 502, 503, 504})


class CaptionRequestError(RuntimeError):
    """A chat-completions request failed for good (after the retries, or with a non-retryable answer)."""


def jpeg_data_url(image, quality: int = 90) -> str:
    """``data:image/jpeg;base64,...`` of a PIL image."""
    buf = io.BytesIO()
    image.convert("RGB").save(buf, format="JPEG", quality=quality)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


class OpenAICaptioner:
    """Captions clips through ``POST {base_url}/chat/completions``."""

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        *,
        prompt_version: str = "v1",
        api_key: str | None = None,
        max_new_tokens: int = 256,
        concurrency: int = 8,
        timeout_s: float = 120.0,
        retries: int = 3,
        backoff_s: float = 1.0,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.prompt_version = prompt_version
        self.prompt = get_prompt(prompt_version)
        self.api_key = api_key
        self.max_new_tokens = int(max_new_tokens)
        self.concurrency = max(1, int(concurrency))
        self.timeout_s = float(timeout_s)
        self.retries = max(0, int(retries))
        self.backoff_s = float(backoff_s)
        self._pool = ThreadPoolExecutor(max_workers=self.concurrency, thread_name_prefix="caption-http")

    @classmethod
    def from_config(cls, cfg) -> OpenAICaptioner:
        return cls(
            cfg.caption_base_url,
            cfg.caption_api_model,
            prompt_version=cfg.caption_prompt_version,
            api_key=os.environ.get(cfg.caption_api_key_env) if cfg.caption_api_key_env else None,
            max_new_tokens=cfg.caption_max_new_tokens,
            concurrency=cfg.caption_concurrency,
            timeout_s=cfg.caption_timeout_s,
            retries=cfg.caption_retries,
            backoff_s=cfg.caption_retry_backoff_s,
        )

    def request_body(self, clip: ClipFrames) -> dict:
        content = [{"type": "text", "text": self.prompt}]
        content += [{"type": "image_url", "image_url": {"url": jpeg_data_url(f)}} for f in clip.frames]
        return {
            "model": self.model,
            "messages": [{"role": "user", "content": content}],
            "max_tokens": self.max_new_tokens,
            "temperature": 0,
        }

    def _post(self, body: bytes) -> dict:
        headers = {"Content-Type": "application/json"}
        if self.api_key:
            headers["Authorization"] = f"Bearer {self.api_key}"
        req = urllib.request.Request(f"{self.base_url}/chat/completions", data=body, headers=headers, method="POST")
        with urllib.request.urlopen(req, timeout=self.timeout_s) as resp:
            return json.loads(resp.read())

    def caption_one(self, clip: ClipFrames) -> str:
        """One clip's caption, with retries; raises :class:`CaptionRequestError` when it cannot be had."""
        body = json.dumps(self.request_body(clip)).encode()
        last = ""
        for attempt in range(self.retries + 1):
            if attempt:
                time.sleep(self.backoff_s * 2 ** (attempt - 1))
            try:
                answer = self._post(body)
            except urllib.error.HTTPError as exc:
                detail = exc.read()[:300].decode("utf-8", "replace")
                last = f"HTTP {exc.code} from {self.base_url}: {detail}"
                if exc.code not in RETRY_STATUS:
                    raise CaptionRequestError(last) from None
                continue
            except TimeoutError as exc:
                last = f"no answer from {self.base_url} within {self.timeout_s:g} s ({exc})"
                continue
            except (urllib.error.URLError, ConnectionError, OSError) as exc:
                reason = getattr(exc, "reason", exc)
                if isinstance(reason, TimeoutError):
                    last = f"no answer from {self.base_url} within {self.timeout_s:g} s"
                else:
                    last = f"request to {self.base_url} failed: {reason}"
                continue
            try:
                text = (answer["choices"][0]["message"]["content"] or "").strip()
            except (KeyError, IndexError, TypeError):
                raise CaptionRequestError(f"unexpected answer from {self.base_url}: {str(answer)[:300]}") from None
            if not text:
                raise CaptionRequestError(f"{self.base_url} answered an empty caption")
            return text
        raise CaptionRequestError(f"gave up after {self.retries + 1} attempts: {last}")

    def caption_each(self, batch: Sequence[ClipFrames]) -> list[str | BaseException]:
        """Every clip of the batch on the thread pool; each slot holds a caption or that clip's error."""
        futures = [self._pool.submit(self.caption_one, clip) for clip in batch]
        out: list[str | BaseException] = []
        for fut in futures:
            try:
                out.append(fut.result())
            except Exception as exc:
                out.append(exc)
        return out

    def caption(self, batch: Sequence[ClipFrames]) -> list[str]:
        out = self.caption_each(batch)
        for item in out:
            if isinstance(item, BaseException):
                raise item
        return out  # type: ignore[return-value]
