"""The bundled small model (SmolLM2-135M-Instruct) served as an OpenAI-compatible HTTP backend.

Run as a child process by `backends.local.LocalModel`: `python -m catcache.backends.local_model
--port P --model FILE.gguf`. It answers /v1/chat/completions and /v1/completions, streamed or not,
with usage counts and, when asked, token log-probabilities (the IC router reads them as the
model's own confidence). torch and transformers (the `local` extra) run it, since transformers
reads GGUF; llama-cpp-python would be faster but must be compiled on the user's machine (README,
"IC-Cache"). A request that names no sampling parameters gets the model's own defaults. One generation runs at a time: a 135M model on a CPU is compute-bound,
so a second concurrent one would only halve the speed of both.
"""

from __future__ import annotations

import argparse
import asyncio
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import orjson
import torch
from fastapi import FastAPI, Request
from fastapi.responses import Response, StreamingResponse

DEFAULT_MAX_TOKENS = 256
# The sampling a request gets when it names none, as vLLM's `--generation-config auto`: the model's own
# defaults, from the GGUF's `general.sampling.*` keys (llama.cpp's names) when the file carries them.
GGUF_SAMPLING = {"general.sampling.temp": "temperature", "general.sampling.top_p": "top_p",
                 "general.sampling.top_k": "top_k"}
# The bundled file carries none, so SmolLM2's authors' recommendation: the "How to use" example of the
# HuggingFaceTB/SmolLM2-135M-Instruct model card generates with temperature=0.2, top_p=0.9.
SMOLLM2_CARD = {"temperature": 0.2, "top_p": 0.9}
# Any other model without defaults in its file: OpenAI's.
OPENAI_DEFAULTS = {"temperature": 1.0, "top_p": 1.0}


def generation_defaults(path: Path) -> tuple[dict[str, float], str]:
    """The model's own sampling defaults and where they come from: its GGUF, its card, or OpenAI's."""
    from gguf import GGUFReader

    fields = GGUFReader(path).fields
    # float32 in the file: 0.6 reads back as 0.6000000238; six decimals give back what the authors wrote.
    found = {name: round(float(fields[key].contents()), 6) for key, name in GGUF_SAMPLING.items() if key in fields}
    if found:
        return {**OPENAI_DEFAULTS, **found}, f"{path.name} (general.sampling.*)"
    basename = fields["general.basename"].contents() if "general.basename" in fields else ""
    if str(basename).lower() == "smollm2":
        return dict(SMOLLM2_CARD), "the SmolLM2-135M-Instruct model card"
    return dict(OPENAI_DEFAULTS), "OpenAI's defaults (the model file names none)"


@dataclass
class Generation:
    """What one request asks the model for."""

    prompt_ids: list[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    stop: list[str]
    seed: int | None
    cancelled: threading.Event = field(default_factory=threading.Event)


@dataclass
class Step:
    """One generated piece: new text (may be empty while a multi-byte character is incomplete)."""

    text: str
    token: str
    logprob: float


class Model:
    """The weights and tokenizer, and a greedy-or-sampled decode loop with a KV cache."""

    def __init__(self, path: Path, name: str):
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name = name
        self.defaults, self.defaults_from = generation_defaults(path)
        self.tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
        self.model = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        self.model.eval()
        self.lock = threading.Lock()
        self.stop_ids = {self.tokenizer.eos_token_id, *self._special("<|im_end|>", "<|endoftext|>")}

    def _special(self, *tokens: str) -> set[int]:
        vocab = self.tokenizer.get_vocab()
        return {vocab[t] for t in tokens if t in vocab}

    def chat_ids(self, messages: list[dict]) -> list[int]:
        flat = [{"role": m.get("role", "user"), "content": _text(m.get("content"))} for m in messages]
        encoded = self.tokenizer.apply_chat_template(flat, add_generation_prompt=True, return_dict=True)
        return list(encoded["input_ids"])

    def prompt_ids(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def generate(self, job: Generation) -> Iterator[Step]:
        """Yield each new token's text as it is decoded; stops at end of turn, `stop`, or max_tokens."""
        with self.lock, torch.inference_mode():
            generator = torch.Generator().manual_seed(job.seed) if job.seed is not None else None
            inputs = torch.tensor([job.prompt_ids])
            past = None
            produced: list[int] = []
            shown = ""
            for _ in range(job.max_tokens):
                if job.cancelled.is_set():
                    return
                out = self.model(input_ids=inputs, past_key_values=past, use_cache=True)
                past = out.past_key_values
                logprobs = torch.log_softmax(out.logits[0, -1].float(), dim=-1)
                token = _pick(logprobs, job.temperature, job.top_p, job.top_k, generator)
                if token in self.stop_ids:
                    return
                produced.append(token)
                text = self.tokenizer.decode(produced, skip_special_tokens=True)
                if text.endswith("\ufffd"):  # half a UTF-8 character: wait for the rest
                    yield Step("", self.tokenizer.decode([token]), float(logprobs[token]))
                else:
                    cut = _stop_at(text, job.stop)
                    new = (text if cut is None else text[:cut])[len(shown):]
                    shown += new
                    yield Step(new, self.tokenizer.decode([token]), float(logprobs[token]))
                    if cut is not None:
                        return
                inputs = torch.tensor([[token]])


def _pick(logprobs: torch.Tensor, temperature: float, top_p: float, top_k: int,
          generator: torch.Generator | None) -> int:
    if temperature <= 0:
        return int(torch.argmax(logprobs))
    if 0 < top_k < logprobs.numel():
        logprobs = logprobs.masked_fill(logprobs < torch.topk(logprobs, top_k).values[-1], float("-inf"))
    probs = torch.softmax(logprobs / temperature, dim=-1)
    if top_p < 1.0:
        ordered, order = torch.sort(probs, descending=True)
        keep = torch.cumsum(ordered, dim=-1) - ordered < top_p
        probs = torch.zeros_like(probs).scatter(0, order[keep], ordered[keep])
    return int(torch.multinomial(probs, 1, generator=generator))


def _stop_at(text: str, stops: list[str]) -> int | None:
    found = [text.find(s) for s in stops if s and s in text]
    return min(found) if found else None


def _text(content: object) -> str:
    """Message content as plain text: a string, or the text parts of a list of parts."""
    if isinstance(content, list):
        return "".join(part.get("text", "") for part in content if isinstance(part, dict))
    return content if isinstance(content, str) else ""


class BadRequest(ValueError):
    pass


def parse(model: Model, endpoint: str, body: dict) -> Generation:
    """The request's sampling settings, checked; BadRequest names the offending field."""
    if endpoint == "chat":
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages or not all(isinstance(m, dict) for m in messages):
            raise BadRequest("'messages' must be a non-empty list of message objects.")
        ids = model.chat_ids(messages)
    else:
        prompt = body.get("prompt")
        if not isinstance(prompt, str):
            raise BadRequest("'prompt' must be a string.")
        ids = model.prompt_ids(prompt)
    max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS
    # A field the request leaves out (or sends as null) takes the model's default, as in vLLM.
    temperature = _given(body, "temperature", model.defaults["temperature"])
    top_p = _given(body, "top_p", model.defaults["top_p"])
    top_k = _given(body, "top_k", model.defaults.get("top_k", -1))
    stop = body.get("stop") or []
    stop = [stop] if isinstance(stop, str) else stop
    if not isinstance(max_tokens, int) or max_tokens < 1:
        raise BadRequest("'max_tokens' must be a positive integer.")
    if not isinstance(temperature, (int, float)) or not 0 <= temperature <= 2:
        raise BadRequest("'temperature' must be a number between 0 and 2.")
    if not isinstance(top_p, (int, float)) or not 0 < top_p <= 1:
        raise BadRequest("'top_p' must be a number in (0, 1].")
    if not isinstance(top_k, (int, float)) or top_k != int(top_k) or top_k < -1:
        raise BadRequest("'top_k' must be a positive integer, or -1 or 0 for no limit.")
    if not isinstance(stop, list) or not all(isinstance(s, str) for s in stop):
        raise BadRequest("'stop' must be a string or a list of strings.")
    seed = body.get("seed")
    return Generation(ids, max_tokens, float(temperature), float(top_p), int(top_k), stop,
                      seed if isinstance(seed, int) else None)


def _given(body: dict, field: str, default: float) -> object:
    value = body.get(field)
    return default if value is None else value


def create_app(model: Model) -> FastAPI:
    app = FastAPI(title="catcache local model", docs_url=None, redoc_url=None)

    @app.get("/health")
    async def health() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    @app.get("/v1/models")
    async def models() -> Response:
        return _json({"object": "list", "data": [{"id": model.name, "object": "model", "owned_by": "catcache"}]})

    @app.post("/v1/chat/completions")
    async def chat(request: Request) -> Response:
        return await _complete(model, "chat", request)

    @app.post("/v1/completions")
    async def completions(request: Request) -> Response:
        return await _complete(model, "completions", request)

    return app


async def _complete(model: Model, endpoint: str, request: Request) -> Response:
    try:
        body = orjson.loads(await request.body())
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        job = parse(model, endpoint, body)
    except orjson.JSONDecodeError as exc:
        return _error(f"We could not parse the JSON body of your request: {exc}")
    except BadRequest as exc:
        return _error(str(exc))
    reply = Reply(model.name, endpoint, body, len(job.prompt_ids))
    steps = _run_in_thread(model, job)
    if body.get("stream") is True:
        usage = bool((body.get("stream_options") or {}).get("include_usage"))
        return StreamingResponse(_events(reply, steps, usage), media_type="text/event-stream")
    async for step in steps:
        reply.add(step)
    return _json(reply.whole())


async def _run_in_thread(model: Model, job: Generation):
    """The decode loop on a worker thread, its steps handed to the event loop as they come."""
    loop = asyncio.get_running_loop()
    queue: asyncio.Queue = asyncio.Queue()

    def work() -> None:
        try:
            for step in model.generate(job):
                loop.call_soon_threadsafe(queue.put_nowait, step)
        finally:
            loop.call_soon_threadsafe(queue.put_nowait, None)

    thread = threading.Thread(target=work, daemon=True)
    thread.start()
    try:
        while (step := await queue.get()) is not None:
            yield step
    finally:
        job.cancelled.set()  # the client went away: stop decoding for nobody


async def _events(reply: Reply, steps, usage: bool):
    async for step in steps:
        reply.add(step)
        if step.text:
            yield _sse(reply.chunk(step))
    yield _sse(reply.chunk(None))
    if usage:
        yield _sse(reply.usage_chunk())
    yield b"data: [DONE]\n\n"


class Reply:
    """Builds the OpenAI-shaped answer, whole or as chunks."""

    def __init__(self, model: str, endpoint: str, body: dict, prompt_tokens: int):
        self.model, self.endpoint, self.prompt_tokens = model, endpoint, prompt_tokens
        self.id = ("chatcmpl-" if endpoint == "chat" else "cmpl-") + uuid.uuid4().hex[:24]
        self.created = int(time.time())
        self.want_logprobs = bool(body.get("logprobs"))
        self.text = ""
        self.steps: list[Step] = []
        self.finish = "stop"
        self.max_tokens = body.get("max_completion_tokens") or body.get("max_tokens") or DEFAULT_MAX_TOKENS

    def add(self, step: Step) -> None:
        self.steps.append(step)
        self.text += step.text
        self.finish = "length" if len(self.steps) >= self.max_tokens else "stop"

    @property
    def usage(self) -> dict:
        done = len(self.steps)
        return {"prompt_tokens": self.prompt_tokens, "completion_tokens": done,
                "total_tokens": self.prompt_tokens + done}

    def _logprobs(self, steps: list[Step]) -> dict | None:
        if not self.want_logprobs:
            return None
        if self.endpoint == "chat":
            return {"content": [{"token": s.token, "logprob": s.logprob, "bytes": None, "top_logprobs": []}
                                for s in steps]}
        return {"tokens": [s.token for s in steps], "token_logprobs": [s.logprob for s in steps]}

    def whole(self) -> dict:
        if self.endpoint == "chat":
            choice = {"index": 0, "message": {"role": "assistant", "content": self.text},
                      "logprobs": self._logprobs(self.steps), "finish_reason": self.finish}
            kind = "chat.completion"
        else:
            choice = {"index": 0, "text": self.text, "logprobs": self._logprobs(self.steps),
                      "finish_reason": self.finish}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model,
                "choices": [choice], "usage": self.usage}

    def chunk(self, step: Step | None) -> dict:
        """A content chunk for `step`, or the closing chunk with the finish reason for None."""
        text = step.text if step else ""
        finish = None if step else self.finish
        logprobs = self._logprobs([step]) if step else None
        if self.endpoint == "chat":
            delta = {"role": "assistant", "content": text} if step else {}
            choice = {"index": 0, "delta": delta, "logprobs": logprobs, "finish_reason": finish}
            kind = "chat.completion.chunk"
        else:
            choice = {"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish}
            kind = "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [choice]}

    def usage_chunk(self) -> dict:
        kind = "chat.completion.chunk" if self.endpoint == "chat" else "text_completion"
        return {"id": self.id, "object": kind, "created": self.created, "model": self.model, "choices": [],
                "usage": self.usage}


def _sse(payload: dict) -> bytes:
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _json(payload: dict) -> Response:
    return Response(orjson.dumps(payload), media_type="application/json")


def _error(message: str, status: int = 400) -> Response:
    body = {"error": {"message": message, "type": "invalid_request_error", "param": None, "code": None}}
    return Response(orjson.dumps(body), status_code=status, media_type="application/json")


def main(argv: list[str] | None = None) -> None:
    import uvicorn

    parser = argparse.ArgumentParser(description="Serve a GGUF chat model over the OpenAI API on the CPU.")
    parser.add_argument("--model", type=Path, required=True, help="the .gguf file")
    parser.add_argument("--name", default="SmolLM2-135M-Instruct", help="the model id it answers to")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = Model(args.model, args.name)
    print(f"sampling defaults {model.defaults} from {model.defaults_from}", flush=True)
    uvicorn.run(create_app(model), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
