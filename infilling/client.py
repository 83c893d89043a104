"""A small client for the infilling server's llama.cpp-style `/infill` endpoint.

For the OpenAI-compatible side use the `openai` package (or codellama.generation.OpenAIGenerator).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence

import httpx


class InfillClient:
    def __init__(self, base_url: str = "http://127.0.0.1:8012", *, timeout: float = 600.0):
        self.base_url = base_url.rstrip("/")
        self._http = httpx.Client(base_url=self.base_url, timeout=timeout)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> InfillClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def health(self) -> dict:
        return self._check(self._call("GET", "/health")).json()

    def infill(
        self,
        prefix: str,
        suffix: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
        **options,
    ) -> dict:
        """The server's full llama.cpp-style answer; the middle is `["content"]`. `options` are more of
        llama.cpp's /infill fields (n_indent, t_max_predict_ms, top_k, min_p, seed, cache_prompt, ...)."""
        body = self._body(prefix, suffix, max_tokens, temperature, top_p, stop, extra, stream=False) | options
        return self._check(self._call("POST", "/infill", json=body)).json()

    def stream(
        self,
        prefix: str,
        suffix: str,
        *,
        max_tokens: int = 128,
        temperature: float = 0.0,
        top_p: float = 1.0,
        stop: Sequence[str] = (),
        extra: Sequence[tuple[str, str]] = (),
        **options,
    ) -> Iterator[str]:
        """Yield pieces of the middle as the server generates them (`options`: as for `infill`)."""
        body = self._body(prefix, suffix, max_tokens, temperature, top_p, stop, extra, stream=True) | options
        try:
            with self._http.stream("POST", "/infill", json=body) as response:
                if response.status_code >= 400:
                    response.read()
                    self._check(response)
                for line in response.iter_lines():
                    if not line.startswith("data: "):
                        continue
                    event = json.loads(line[6:])
                    if "error" in event:
                        raise RuntimeError(f"server error: {event['error'].get('message')}")
                    if event.get("content"):
                        yield event["content"]
                    if event.get("stop"):
                        return
        except httpx.TransportError as exc:
            raise ValueError(f"cannot reach the infilling server at {self.base_url} ({exc})") from None

    @staticmethod
    def _body(prefix, suffix, max_tokens, temperature, top_p, stop, extra, stream) -> dict:
        return {
            "input_prefix": prefix,
            "input_suffix": suffix,
            "n_predict": max_tokens,
            "temperature": temperature,
            "top_p": top_p,
            "stop": list(stop),
            "stream": stream,
            "input_extra": [{"filename": name, "text": text} for name, text in extra],
        }

    def _call(self, method: str, path: str, **kwargs) -> httpx.Response:
        try:
            return self._http.request(method, path, **kwargs)
        except httpx.TransportError as exc:
            raise ValueError(f"cannot reach the infilling server at {self.base_url} ({exc})") from None

    @staticmethod
    def _check(response: httpx.Response) -> httpx.Response:
        if response.status_code >= 400:
            try:
                message = response.json()["error"]["message"]
            except (ValueError, KeyError, TypeError):
                message = response.text[:200]
            raise ValueError(f"server answered {response.status_code}: {message}")
        return response


__all__ = ["InfillClient"]
