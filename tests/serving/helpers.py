"""What the serving tests share: a tiny byte-level GPT checkpoint, and plain HTTP calls."""

import http.client
import json
from collections.abc import Iterator
from pathlib import Path

import torch

from gptcli.config import ModelConfig
from gptcli.models import GPT
from gptcli.storage import checkpoint as ckpt
from gptcli.tokenizers import BPETokenizer

EOT = 256  # byte-level: ids 0..255 are bytes, so any prompt encodes


def save_tiny_checkpoint(directory: Path, eot: bool = True, seed: int = 0, **shape) -> Path:
    """A random GPT over bytes (+ <|endoftext|>), context 64, saved as `gpt train` would. Its output
    head is untied and scaled up: a random tied model repeats one token, this one says varied things."""
    torch.manual_seed(seed)
    tokenizer = BPETokenizer([], special_tokens={"<|endoftext|>": EOT} if eot else {})
    config = dict(vocab_size=tokenizer.vocab_size, block_size=64, n_layer=2, n_head=2, n_embd=32, dropout=0.0)
    config.update(tie_weights=False, **shape)
    model = GPT(ModelConfig(**config))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
    return ckpt.save_checkpoint(directory, model, model.config, tokenizer, {"step": 1})


def post(port: int, path: str, body: bytes | str | dict, headers: dict | None = None) -> tuple[int, dict]:
    """POST a body (a dict is sent as JSON) -> (status, parsed JSON answer)."""
    if isinstance(body, dict):
        body = json.dumps(body)
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request(
        "POST", path, body=body, headers={"Content-Type": "application/json", **(headers or {})}
    )
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, json.loads(data)


def get(port: int, path: str, headers: dict | None = None) -> tuple[int, bytes]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    connection.request("GET", path, headers=headers or {})
    response = connection.getresponse()
    data = response.read()
    connection.close()
    return response.status, data


def sse_events(response: http.client.HTTPResponse) -> Iterator[str]:
    """The `data:` payloads of a server-sent event stream, as they arrive."""
    for line in response:
        line = line.decode().rstrip("\r\n")
        if line.startswith("data: "):
            yield line[len("data: ") :]


IM_START, IM_END = 257, 258  # the chat checkpoint's ChatML tokens


def save_tiny_chat_checkpoint(
    directory: Path, seed: int = 0, block_size: int = 128, printable: bool = False, **shape
) -> Path:
    """save_tiny_checkpoint's model with ChatML's tokens added and its template saved, as `gpt
    finetune` leaves a checkpoint: what `gpt chat` and /v1/chat/completions need. The model is random
    (replies are varied bytes). printable: its head is cut to printable ASCII (the rows of other ids
    zeroed: their logit 0 never wins a greedy pick), so a greedy reply's text encodes back to its ids."""
    from gptcli.chat.template import ChatTemplate

    torch.manual_seed(seed)
    special = {"<|endoftext|>": EOT, "<|im_start|>": IM_START, "<|im_end|>": IM_END}
    tokenizer = BPETokenizer([], special_tokens=special)
    config = dict(vocab_size=tokenizer.vocab_size, block_size=block_size, n_layer=2, n_head=2, n_embd=32)
    config.update(dropout=0.0, tie_weights=False, **shape)
    model = GPT(ModelConfig(**config))
    with torch.no_grad():
        model.lm_head.weight.mul_(20)
        if printable:
            model.lm_head.weight[:32] = 0
            model.lm_head.weight[127:] = 0
    info = {"step": 1, "chat_template": ChatTemplate.chatml().to_json()}
    return ckpt.save_checkpoint(directory, model, model.config, tokenizer, info)
