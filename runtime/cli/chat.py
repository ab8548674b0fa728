"""``reverb chat``: talk to a model in the terminal.

Tokens print as they come; the conversation is kept until ``/reset``. Line editing and history come from
readline; lines starting with ``/`` are commands (``/help``), never sent to the model (``//`` sends a literal
``/``). A line ending in ``\\`` continues on the next line. Ctrl-C stops the current answer and returns to the
prompt; Ctrl-C at the prompt twice, Ctrl-D or ``/exit`` leave. It talks to the in-process engine, or with
``--url`` to a running server, which is checked (reachable, key accepted, model served) before the first prompt:
if it cannot work, chat exits non-zero at once. Later failures print an error line and the conversation goes on.
"""

from __future__ import annotations

import http.client
import json
import os
import re
import sys
from dataclasses import replace
from urllib.parse import urlsplit

from ..errors import ConfigError, RemoteError, ReverbError
from ..settings import Settings
from ..types import Message, SamplingParams
from .flags import settings_from

HELP = "type a message; end a line with \\ to continue it; /help lists the commands, /exit leaves"
COMMANDS = {"/help": "list these commands", "/reset": "clear the conversation (keeps the system message)",
            "/history": "show the conversation so far",
            "/set system TEXT": "set the system message (/set system alone removes it)",
            "/set temperature X": "also: /set seed N, /set max-tokens N, /set top-p X (/set seed alone: random)",
            "/show": "the model, the system message and the sampling settings",
            "/save NAME": "save the conversation and settings (in the chats folder)",
            "/load NAME": "load a saved conversation and its settings",
            "/exit": "leave (also /quit, Ctrl-D, Ctrl-C twice)"}
SAVE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


class LocalBackend:
    """The model in this process, through the same service the server uses (no ledger charges: a dev account)."""

    def __init__(self, settings: Settings):
        # imported here, not with the module: every `reverb` command imports this one to build its parser
        import asyncio
        import threading

        from ..request import Account
        from ..service import build
        # serve=False: reads and logs to an existing --db, takes no lease and never refunds another server's holds
        self.service = build(settings.with_(db=settings.db or _memory_db(), parallel=1), serve=False)
        self.model = next(iter(self.service.backends))
        self.account = Account("chat", None, unlimited=True)
        self.loop = asyncio.new_event_loop()
        threading.Thread(target=self.loop.run_forever, daemon=True).start()
        self.current = None

    def stream(self, messages: list[dict], params: SamplingParams, max_tokens: int):
        import asyncio
        from queue import Queue

        from ..request import Ask, RequestContext
        out: Queue = Queue()

        async def run():
            try:
                ask = Ask(model=self.model, messages=tuple(Message(m["role"], m["content"]) for m in messages),
                          sampling=replace(params, max_tokens=max_tokens))
                gen = await self.service.start(RequestContext(endpoint="chat", account=self.account), ask)
                self.current = gen
                async for chunk in gen:
                    out.put(chunk.text)
                    if chunk.finish_reason is not None:
                        if chunk.error is not None:
                            raise chunk.error
                        break
            except ReverbError as e:
                out.put(e)
            finally:
                out.put(None)

        asyncio.run_coroutine_threadsafe(run(), self.loop)
        while True:
            piece = out.get()
            if piece is None:
                return
            if isinstance(piece, ReverbError):
                raise piece
            yield piece

    def check(self) -> None:
        """Loading the model already checked everything."""

    def cancel(self) -> None:
        if self.current is not None:
            self.loop.call_soon_threadsafe(self.current.cancel)

    def close(self) -> None:
        self.service.close()


class RemoteBackend:
    """A running reverb (or any OpenAI-compatible) server, streamed over SSE with the standard library."""

    def __init__(self, url: str, key: str, model: str | None):
        self.url = urlsplit(url)
        if self.url.scheme not in ("http", "https") or not self.url.hostname:
            raise ConfigError(f"--url must look like http://host:port, not {url!r}")
        try:
            _ = self.url.port  # urlsplit checks the port only when asked
        except ValueError:
            raise ConfigError(f"--url has a bad port: {url!r}") from None
        self.key = key
        self.model = model
        self.conn = None

    def _request(self, method: str, path: str, body: dict | None = None):
        cls = http.client.HTTPSConnection if self.url.scheme == "https" else http.client.HTTPConnection
        self.conn = cls(self.url.hostname, self.url.port, timeout=600)
        headers = {"Authorization": f"Bearer {self.key}", "Content-Type": "application/json"}
        try:
            self.conn.request(method, self.url.path.rstrip("/") + path, json.dumps(body) if body else None, headers)
            return self.conn.getresponse()
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"cannot reach {self.url.geturl()}: {e}") from None

    def _error(self, resp) -> RemoteError:
        raw = resp.read()
        try:
            message = json.loads(raw or b"{}").get("error", {}).get("message", "")
        except (ValueError, AttributeError):
            return RemoteError(f"the server answered HTTP {resp.status} with something that is not JSON")
        return RemoteError(f"the server said {resp.status}: {message}")

    def check(self) -> None:
        """Before the first prompt: the server answers, takes the key and serves the model."""
        resp = self._request("GET", "/v1/models")
        if resp.status != 200:
            raise self._error(resp)
        try:
            names = [m["id"] for m in json.loads(resp.read())["data"]]
        except (ValueError, KeyError, TypeError):
            raise RemoteError("the server's model list is not OpenAI's JSON; is --url a reverb server?") from None
        finally:
            self.conn.close()
        if self.model is None and names:
            self.model = names[0]
        if self.model not in names:
            raise RemoteError(f"the server does not serve {self.model!r}; it serves: {', '.join(names) or 'nothing'}")

    def stream(self, messages: list[dict], params: SamplingParams, max_tokens: int):
        body = {"model": self.model, "messages": messages, "stream": True, "max_tokens": max_tokens,
                "temperature": params.temperature, "top_p": params.top_p}
        if params.seed is not None:
            body["seed"] = params.seed
        resp = self._request("POST", "/v1/chat/completions", body)
        if resp.status != 200:
            raise self._error(resp)
        try:
            for raw in resp:
                line = raw.decode("utf-8", "replace").rstrip("\n")
                if line == "data: [DONE]":
                    return
                if line.startswith("data: {"):
                    try:
                        ev = json.loads(line[6:])
                    except ValueError:
                        raise RemoteError("the server sent an event that is not JSON") from None
                    if "error" in ev:
                        raise RemoteError(ev["error"].get("message", "error"))
                    if ev.get("choices"):
                        yield ev["choices"][0]["delta"].get("content") or ""
            raise RemoteError("the answer was cut off before its end")
        except (OSError, http.client.HTTPException) as e:
            raise RemoteError(f"the connection broke: {e}") from None
        finally:
            self.conn.close()

    def cancel(self) -> None:
        if self.conn is not None:
            self.conn.close()  # the server sees the disconnect and frees the slot

    def close(self) -> None:
        pass


def _memory_db():
    from pathlib import Path
    return Path(":memory:")


def read_message(prompt: str = "> ") -> str:
    """One message; a trailing backslash continues it on the next line. Raises EOFError/KeyboardInterrupt."""
    lines = [input(prompt)]
    while lines[-1].endswith("\\"):
        lines[-1] = lines[-1][:-1]
        lines.append(input("... "))
    return "\n".join(lines)


def data_dir():
    from ..settings import default_data_dir
    return default_data_dir()


class Session:
    """One conversation: its system message, its messages and its sampling settings (what /save keeps)."""

    def __init__(self, model: str, params: SamplingParams, max_tokens: int, system: str | None):
        self.model, self.params, self.max_tokens, self.system = model, params, max_tokens, system
        self.turns: list[dict] = []

    def messages(self) -> list[dict]:
        return ([{"role": "system", "content": self.system}] if self.system else []) + self.turns

    def command(self, cmd: str) -> bool:
        """Run a /command; False for /exit. Prints what it did."""
        word, _, rest = cmd.partition(" ")
        rest = rest.strip()
        if word in ("/exit", "/quit"):
            return False
        if word == "/reset":
            self.turns = []
            say("(history cleared)")
        elif word == "/history":
            for m in self.messages():
                say(f"[{m['role']}] {m['content']}")
        elif word == "/help":
            say("\n".join(f"  {c:<19} {what}" for c, what in COMMANDS.items()))
        elif word == "/set":
            self._set(rest)
        elif word == "/show":
            p = self.params
            say(f"model: {self.model}\nsystem: {self.system or '(none)'}\ntemperature: {p.temperature:g}  "
                f"top-p: {p.top_p:g}  seed: {'random' if p.seed is None else p.seed}  max-tokens: "
                f"{self.max_tokens}\nturns: {len(self.turns) // 2}")
        elif word in ("/save", "/load"):
            if not SAVE_NAME.match(rest):
                say(f"({word} NAME: a name of letters, digits, '.', '_' or '-')")
            elif word == "/save":
                self._save(rest)
            else:
                self._load(rest)
        else:
            say(f"(unknown command {word}; /help lists them, and // starts a message with /)")
        return True

    def _set(self, rest: str) -> None:
        key, _, value = rest.partition(" ")
        value = value.strip()
        if key == "system":
            self.system = value or None
            say("(system message set)" if value else "(system message removed)")
            return
        fields = {"temperature": ("temperature", float, 0.0, 2.0), "top-p": ("top_p", float, 0.0, 1.0),
                  "seed": ("seed", int, 0, 2**63 - 1), "max-tokens": ("max_tokens", int, 1, 1 << 20)}
        if key not in fields:
            say("(/set system TEXT, /set temperature X, /set top-p X, /set seed N, /set max-tokens N)")
            return
        name, kind, lo, hi = fields[key]
        if key == "seed" and not value:
            self.params = replace(self.params, seed=None)
            say("(seed: random)")
            return
        try:
            number = kind(value)
        except ValueError:
            say(f"(/set {key}: not a number: {value!r})")
            return
        if not lo <= number <= hi:
            say(f"(/set {key}: must be between {lo} and {hi})")
            return
        if name == "max_tokens":
            self.max_tokens = number
        else:
            self.params = replace(self.params, **{name: number})
        say(f"({key}: {number:g})")

    def _path(self, name: str):
        return data_dir() / "chats" / f"{name}.json"

    def _save(self, name: str) -> None:
        path = self._path(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        p = self.params
        path.write_text(json.dumps({"model": self.model, "system": self.system, "turns": self.turns,
                                    "temperature": p.temperature, "top_p": p.top_p, "seed": p.seed,
                                    "max_tokens": self.max_tokens}, indent=1), encoding="utf-8")
        say(f"(saved to {path})")

    def _load(self, name: str) -> None:
        path = self._path(name)
        try:
            saved = json.loads(path.read_text(encoding="utf-8"))
            turns = [{"role": str(m["role"]), "content": str(m["content"])} for m in saved["turns"]
                     if m["role"] in ("user", "assistant")]
            params = replace(self.params, temperature=float(saved["temperature"]), top_p=float(saved["top_p"]),
                             seed=None if saved["seed"] is None else int(saved["seed"]))
            max_tokens = int(saved["max_tokens"])
            system = saved["system"] if isinstance(saved.get("system"), str) else None
        except FileNotFoundError:
            say(f"(no saved chat {name!r} in {path.parent})")
            return
        except (ValueError, KeyError, TypeError):
            say(f"({path} is not a saved chat)")
            return
        self.turns, self.params, self.max_tokens, self.system = turns, params, max_tokens, system
        note = "" if saved.get("model") == self.model else f"; it was saved with {saved.get('model')}"
        say(f"(loaded {len(turns) // 2} turns{note})")


def say(text: str) -> None:
    print(text, flush=True)


def _line_history():
    """Line editing, and the typed lines kept across sessions (a file in the data directory), on a terminal."""
    if not sys.stdin.isatty():
        return None
    import readline
    path = data_dir() / "chat_history"
    try:
        readline.read_history_file(path)
    except OSError:
        pass
    readline.set_history_length(1000)
    return readline, path


def run(backend, params: SamplingParams, max_tokens: int, system: str | None = None) -> int:
    history = _line_history()
    session = Session(backend.model, params, max_tokens, system)
    print(f"reverb chat: {backend.model}. {HELP}", flush=True)
    try:
        _loop(backend, session)
    finally:
        if history is not None:
            readline, path = history
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
                readline.write_history_file(path)
            except OSError:
                pass
    backend.close()
    return 0


def _loop(backend, session: Session) -> None:
    while True:
        try:
            text = read_message()
        except EOFError:
            print()
            break
        except KeyboardInterrupt:
            print("\n(Ctrl-C again or /exit to leave)", flush=True)
            try:
                text = read_message()
            except (EOFError, KeyboardInterrupt):
                print()
                break
        cmd = text.strip()
        if not cmd:
            continue
        if cmd.startswith("/") and not cmd.startswith("//"):
            if not session.command(cmd):
                break
            continue
        if cmd.startswith("//"):
            text = text.replace("//", "/", 1)
        session.turns.append({"role": "user", "content": text})
        answer = []
        try:
            for piece in backend.stream(session.messages(), session.params, session.max_tokens):
                answer.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            print(flush=True)
        except KeyboardInterrupt:
            backend.cancel()
            print(" [stopped]", flush=True)
        except ReverbError as e:
            print(f"\n(error: {e.message})", flush=True)
            session.turns.pop()
            continue
        session.turns.append({"role": "assistant", "content": "".join(answer)})


def add_parsers(sub, common) -> None:
    c = sub.add_parser("chat", help="chat with a model in the terminal", parents=common)
    c.add_argument("--model", dest="chat_model", help="a catalogue name, a .gguf file or hf.co/OWNER/REPO[:QUANT] "
                   "(default: the catalogue's default)")
    _chat_flags(c)
    c.set_defaults(run=main)
    r = sub.add_parser("run", help="pull a model if needed, then chat with it", parents=common)
    r.add_argument("chat_model", metavar="MODEL", help="a catalogue name, a .gguf file or hf.co/OWNER/REPO[:QUANT]")
    _chat_flags(r)
    r.set_defaults(run=run_model)


def run_model(args) -> int:
    """``reverb run MODEL``: ``chat`` with downloads allowed."""
    args.pull = True
    return main(args)


def _chat_flags(c) -> None:
    c.add_argument("--url", help="talk to a running server instead of loading the model here")
    c.add_argument("--api-key", dest="chat_key", help="key for --url (default: REVERB_API_KEY)")
    c.add_argument("--max-tokens", type=int, default=512, help="longest answer in tokens (default 512)")
    c.add_argument("--temperature", type=float, default=0.7, help="sampling temperature (default 0.7)")
    c.add_argument("--seed", type=int, help="sampling seed, for repeatable answers")
    c.add_argument("--system", help="a system message to start the conversation with")


def main(args) -> int:
    params = SamplingParams(temperature=args.temperature, seed=args.seed)
    if args.url:
        key = args.chat_key or os.environ.get("REVERB_API_KEY", "")
        backend = RemoteBackend(args.url, key, args.chat_model)
    else:
        settings = settings_from(args, models=(args.chat_model,) if args.chat_model else None)
        backend = LocalBackend(settings)
    backend.check()  # a dead server, a refused key or an unknown model ends here, with a non-zero exit
    return run(backend, params, args.max_tokens, args.system)
