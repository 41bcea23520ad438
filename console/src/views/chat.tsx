// Chat: the sessions list (search by title, newest first, paginated; new, rename, delete) and
// the conversation: messages, a run's answer streamed token by token (resumed after a network
// drop or a reload), tool steps, function calls answered by hand, attachments, export.
import { useCallback, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { CloseIcon, PaperclipIcon, PencilIcon, TrashIcon } from "../icons";
import { Link, useLocation, useSearch } from "wouter-preact";
import { ApiError, describe, saveBlob, type Page } from "../api";
import { COMPOSER_ID, useConsole } from "../app";
import { apply, emptyRun, follow, type Connection, type LiveRun } from "../runstream";
import {
  ACTIVE_RUN,
  MODEL_CHAT_KEY,
  MODEL_CHAT_VALUE,
  THREAD_MODEL_KEY,
  type Assistant,
  type Message,
  type Model,
  type Run,
  type Step,
  type Thread,
} from "../types";
import { useFileDrop } from "../filedrop";
import { MessageView, StepsView } from "./messages";

// ---- what to chat with -----------------------------------------------------------------------

type Target = { kind: "assistant"; id: string } | { kind: "model"; id: string };

const encodeTarget = (target: Target | null) => (target ? `${target.kind}:${target.id}` : "");
const decodeTarget = (value: string): Target | null => {
  const [kind, ...rest] = value.split(":");
  const id = rest.join(":");
  return (kind === "assistant" || kind === "model") && id ? { kind, id } : null;
};

/** A model as a person picks it: its id, and its display name where that says more. */
export function modelLabel(model: Model): string {
  const name = model.display_name;
  return name && name !== model.id && !model.id.endsWith(`/${name}`) ? `${name} (${model.id})` : model.id;
}

export function templateVariables(instructions: string | null | undefined): string[] {
  const names = new Set<string>();
  for (const match of (instructions ?? "").matchAll(/\{\{\s*([A-Za-z0-9_]+)\s*\}\}/g)) names.add(match[1]);
  return [...names];
}

interface Choices {
  assistants: Assistant[];
  models: Model[];
  modelChat: Assistant | null;
  loading: boolean;
  error: string | null;
}

function useChoices(): Choices {
  const { api } = useConsole();
  const [choices, setChoices] = useState<Choices>({ assistants: [], models: [], modelChat: null, loading: true, error: null });
  useEffect(() => {
    let live = true;
    Promise.all([api.get<Page<Assistant>>("/assistants?limit=100"), api.get<Page<Model>>("/parley/models")])
      .then(([assistants, models]) => {
        if (!live) return;
        setChoices({
          assistants: assistants.data.filter((a) => a.metadata?.[MODEL_CHAT_KEY] !== MODEL_CHAT_VALUE),
          modelChat: assistants.data.find((a) => a.metadata?.[MODEL_CHAT_KEY] === MODEL_CHAT_VALUE) ?? null,
          models: models.data.filter((m) => !m.capabilities.includes("embeddings") && m.availability !== "unconfigured"),
          loading: false,
          error: null,
        });
      })
      .catch((error) => live && setChoices((c) => ({ ...c, loading: false, error: describe(error) })));
    return () => {
      live = false;
    };
  }, [api]);
  return choices;
}

// ---- sessions --------------------------------------------------------------------------------

interface Sessions {
  items: Thread[];
  next: string | null;
  loading: boolean;
  error: string | null;
}

function useSessions(query: string, version: number) {
  const { api } = useConsole();
  const [state, setState] = useState<Sessions>({ items: [], next: null, loading: true, error: null });
  const load = useCallback(async (token: string | null, append: boolean) => {
    setState((s) => ({ ...s, loading: true }));
    try {
      const params = new URLSearchParams({ limit: "20" });
      if (query) params.set("query", query);
      if (token) params.set("page_token", token);
      const page = await api.get<Page<Thread>>(`/parley/threads?${params}`);
      setState((s) => ({ items: append ? [...s.items, ...page.data] : page.data, next: page.next_page_token ?? null, loading: false, error: null }));
    } catch (error) {
      setState((s) => ({ ...s, loading: false, error: describe(error) }));
    }
  }, [api, query]);
  useEffect(() => {
    const timer = setTimeout(() => load(null, false), query ? 250 : 0);
    return () => clearTimeout(timer);
  }, [load, version]);
  return { ...state, more: () => state.next && load(state.next, true) };
}

function SessionItem(props: { thread: Thread; active: boolean; onChanged: () => void }) {
  const { api, notify } = useConsole();
  const [, navigate] = useLocation();
  const [renaming, setRenaming] = useState(false);
  const [confirming, setConfirming] = useState(false);
  const [title, setTitle] = useState(props.thread.title);
  const [busy, setBusy] = useState(false);
  const label = props.thread.title || "Untitled chat";

  const rename = async () => {
    setBusy(true);
    try {
      await api.post(`/parley/threads/${props.thread.id}`, { title: title.trim() });
      setRenaming(false);
      props.onChanged();
    } catch (error) {
      notify("error", `Not renamed: ${describe(error)}`);
    } finally {
      setBusy(false);
    }
  };
  const remove = async () => {
    setBusy(true);
    try {
      await api.delete(`/threads/${props.thread.id}`);
      if (props.active) navigate("/chat");
      props.onChanged();
    } catch (error) {
      notify("error", `Not deleted: ${describe(error)}`);
      setBusy(false);
    }
  };

  if (renaming) {
    return (
      <li class="session editing">
        <form onSubmit={(e) => {
          e.preventDefault();
          rename();
        }}>
          <label class="visually-hidden" for={`rename-${props.thread.id}`}>New title for {label}</label>
          <input id={`rename-${props.thread.id}`} value={title} maxLength={256} autoFocus disabled={busy}
            onInput={(e) => setTitle((e.target as HTMLInputElement).value)}
            onKeyDown={(e) => {
              if (e.key === "Escape") {
                e.preventDefault();
                setRenaming(false);
              }
            }} />
          <button type="submit" class="button small" disabled={busy}>Save</button>
        </form>
      </li>
    );
  }
  return (
    <li class={props.active ? "session active" : "session"} data-testid="session-item" data-thread-id={props.thread.id}>
      <Link href={`/chat/${props.thread.id}`} aria-current={props.active ? "page" : undefined} class="session-link">
        <span class="session-title">{label}</span>
        <span class="session-date">{new Date(props.thread.created_at * 1000).toLocaleString()}</span>
      </Link>
      {confirming ? (
        <span class="session-actions">
          <button type="button" class="button small danger" disabled={busy} onClick={remove}>Delete</button>
          <button type="button" class="button small" onClick={() => setConfirming(false)}>Keep</button>
        </span>
      ) : (
        <span class="session-actions">
          <button type="button" class="icon-button small" aria-label={`Rename ${label}`} onClick={() => setRenaming(true)}><PencilIcon /></button>
          <button type="button" class="icon-button small" aria-label={`Delete ${label}`} onClick={() => setConfirming(true)}><TrashIcon /></button>
        </span>
      )}
    </li>
  );
}

// ---- the conversation ------------------------------------------------------------------------

interface Attachment {
  key: number;
  name: string;
  image: boolean;
  progress: number;
  fileId: string | null;
  error: string | null;
}

let attachmentCounter = 0;

// A run just started in a new chat, handed to that chat's view so that it follows the run at
// once instead of finding it after loading the chat.
const startedRuns = new Map<string, string>();

function Composer(props: {
  disabled: boolean;
  running: boolean;
  stopping: boolean;
  attachments: Attachment[];
  onAttach: (files: FileList | File[]) => void;
  onRemove: (key: number) => void;
  onSend: (text: string) => Promise<boolean>;
  onStop: () => void;
}) {
  const [text, setText] = useState("");
  const picker = useRef<HTMLInputElement>(null);
  const uploading = props.attachments.some((a) => !a.fileId && !a.error);
  const canSend = !props.disabled && !props.running && !uploading && text.trim().length > 0;

  const send = async () => {
    if (!canSend) return;
    const value = text;
    setText("");
    if (!(await props.onSend(value))) setText(value);
  };

  return (
    <form class="composer" onSubmit={(e) => {
      e.preventDefault();
      send();
    }}>
      {props.attachments.length > 0 && (
        <ul class="attachments" aria-label="Attachments">
          {props.attachments.map((a) => (
            <li key={a.key} class="attachment" data-testid="attachment">
              <span class="attachment-name">{a.image ? "Image: " : ""}{a.name}</span>
              {!a.fileId && !a.error && (
                <progress max={1} value={a.progress} aria-label={`Uploading ${a.name}`} data-testid="attachment-progress" />
              )}
              {a.fileId && <span class="badge completed">uploaded</span>}
              {a.error && <span class="error">{a.error}</span>}
              <button type="button" class="icon-button small" aria-label={`Remove ${a.name}`} onClick={() => props.onRemove(a.key)}><CloseIcon /></button>
            </li>
          ))}
        </ul>
      )}
      <div class="composer-row">
        <button type="button" class="icon-button" aria-label="Attach files" title="Attach files (or drop them here)"
          onClick={() => picker.current?.click()} disabled={props.disabled}><PaperclipIcon /></button>
        <input ref={picker} type="file" multiple class="visually-hidden" tabIndex={-1} aria-hidden="true"
          data-testid="attach-input"
          onChange={(e) => {
            const input = e.target as HTMLInputElement;
            if (input.files?.length) props.onAttach(input.files);
            input.value = "";
          }} />
        <label for={COMPOSER_ID} class="visually-hidden">Message</label>
        <textarea id={COMPOSER_ID} rows={2} value={text} placeholder="Message… (Enter sends, Shift+Enter adds a line)"
          disabled={props.disabled} data-testid="composer"
          onInput={(e) => setText((e.target as HTMLTextAreaElement).value)}
          onKeyDown={(e) => {
            if (e.key === "Enter" && !e.shiftKey && !e.isComposing) {
              e.preventDefault();
              send();
            }
          }} />
        {props.running ? (
          <button type="button" class="button danger" data-testid="stop-button" onClick={props.onStop} disabled={props.stopping}>
            {props.stopping ? "Stopping…" : "Stop"}
          </button>
        ) : (
          <button type="submit" class="button primary" data-testid="send-button" disabled={!canSend}>Send</button>
        )}
      </div>
    </form>
  );
}

function FunctionCallForm(props: { threadId: string; run: Run; onError: (text: string) => void }) {
  const { api } = useConsole();
  const calls = props.run.required_action?.submit_tool_outputs.tool_calls ?? [];
  const [outputs, setOutputs] = useState<Record<string, string>>({});
  const [sending, setSending] = useState(false);
  const submit = async (event: Event) => {
    event.preventDefault();
    setSending(true);
    try {
      await api.post(`/threads/${props.threadId}/runs/${props.run.id}/submit_tool_outputs`, {
        tool_outputs: calls.map((call) => ({ tool_call_id: call.id, output: outputs[call.id] ?? "" })),
      });
    } catch (error) {
      props.onError(`The outputs were not accepted: ${describe(error)}`);
      setSending(false);
    }
  };
  return (
    <form class="function-calls" onSubmit={submit} data-testid="function-call-form" aria-label="Answer the function calls">
      <h3>The assistant is waiting for {calls.length === 1 ? "a function's output" : `${calls.length} functions' outputs`}</h3>
      {calls.map((call) => (
        <div key={call.id} class="function-call">
          <p><strong>{call.function.name}</strong> <span class="muted">({call.id})</span></p>
          <pre>{call.function.arguments}</pre>
          <label for={`output-${call.id}`}>Output of {call.function.name}</label>
          <textarea id={`output-${call.id}`} rows={3} required data-testid="function-output"
            value={outputs[call.id] ?? ""} onInput={(e) => setOutputs({ ...outputs, [call.id]: (e.target as HTMLTextAreaElement).value })} />
        </div>
      ))}
      <button type="submit" class="button primary" disabled={sending} data-testid="submit-outputs">
        {sending ? "Sending…" : "Submit outputs"}
      </button>
    </form>
  );
}

async function modelChatAssistant(api: ReturnType<typeof useConsole>["api"], known: Assistant | null, model: string): Promise<string> {
  if (known) return known.id;
  const listed = await api.get<Page<Assistant>>("/assistants?limit=100");
  const found = listed.data.find((a) => a.metadata?.[MODEL_CHAT_KEY] === MODEL_CHAT_VALUE);
  if (found) return found.id;
  const made = await api.post<Assistant>("/assistants", {
    model, name: "Model chat (console)", description: "Runs the console's plain model chats; the model is chosen per chat.",
    metadata: { [MODEL_CHAT_KEY]: MODEL_CHAT_VALUE },
  });
  return made.id;
}

function Conversation(props: {
  threadId: string | null;
  choices: Choices;
  variables: Record<string, string>;
  setVariables: (values: Record<string, string>) => void;
  onThreadCreated: (thread: Thread) => void;
  preselect: Target | null;
}) {
  const { api, notify, chatActions } = useConsole();
  const [, navigate] = useLocation();
  const { threadId, choices } = props;
  const [thread, setThread] = useState<Thread | null>(null);
  const [messages, setMessages] = useState<Message[]>([]);
  const [steps, setSteps] = useState<Record<string, Step[]>>({});
  const [loading, setLoading] = useState(Boolean(threadId));
  const [loadError, setLoadError] = useState<string | null>(null);
  const [live, setLive] = useState<LiveRun | null>(null);
  const [connection, setConnection] = useState<Connection>("closed");
  const [stopping, setStopping] = useState(false);
  const [pending, setPending] = useState<Message | null>(null);
  const [attachments, setAttachments] = useState<Attachment[]>([]);
  const [dragging, dropHandlers] = useFileDrop((files) => attach(files));
  const [chosen, setChosen] = useState<Target | null>(props.threadId ? null : props.preselect);
  // How the last run ended when it did not complete (stopped, failed, …), shown until the next one.
  const [outcome, setOutcome] = useState<{ run: Run | null; error: string | null } | null>(null);
  const liveRef = useRef<LiveRun | null>(null);
  liveRef.current = live;
  const following = useRef<AbortController | null>(null);
  const end = useRef<HTMLDivElement>(null);

  // What the next message goes to: the thread's assistant (or its model, for model chats),
  // or the person's choice for a new chat.
  const threadTarget: Target | null = useMemo(() => {
    if (!thread) return null;
    const model = thread.metadata?.[THREAD_MODEL_KEY];
    if (model) return { kind: "model", id: model };
    return thread.assistant_id ? { kind: "assistant", id: thread.assistant_id } : null;
  }, [thread]);
  const defaultTarget: Target | null = choices.assistants[0]
    ? { kind: "assistant", id: choices.assistants[0].id }
    : choices.models[0] ? { kind: "model", id: choices.models[0].id } : null;
  const target = chosen ?? threadTarget ?? defaultTarget;
  const assistant = target?.kind === "assistant" ? choices.assistants.find((a) => a.id === target.id) : undefined;
  const variableNames = templateVariables(assistant?.instructions);

  const loadStored = useCallback(async (id: string) => {
    const [threadBody, page, runs] = await Promise.all([
      api.get<Thread>(`/parley/threads/${id}`),
      api.get<Page<Message>>(`/parley/threads/${id}/messages?limit=100`),
      api.get<Page<Run>>(`/threads/${id}/runs?limit=20`),
    ]);
    const runIds = [...new Set(page.data.map((m) => m.run_id).filter((r): r is string => Boolean(r)))];
    const stepPages = await Promise.all(runIds.map((runId) =>
      api.get<Page<Step>>(`/threads/${id}/runs/${runId}/steps?order=asc&limit=100`).then((p) => [runId, p.data] as const)));
    return { thread: threadBody, messages: page.data, steps: Object.fromEntries(stepPages), runs: runs.data };
  }, [api]);

  const followRun = useCallback((id: string, runId: string) => {
    following.current?.abort();
    const controller = new AbortController();
    following.current = controller;
    setLive(emptyRun());
    setOutcome(null);
    setStopping(false);
    follow(api, id, runId, {
      after: 0,
      signal: controller.signal,
      onConnection: setConnection,
      onEvent: (name, data, sequence) => setLive((state) => {
        const next = apply(state ?? emptyRun(), name, data);
        return sequence === null ? next : { ...next, sequence };
      }),
    }).then(async () => {
      if (controller.signal.aborted) return;
      // The run is over: show what is stored (the answer under the same id), then drop the live copy.
      const stored = await loadStored(id);
      if (controller.signal.aborted) return;
      const last = liveRef.current;
      setThread(stored.thread);
      setMessages(stored.messages);
      setSteps(stored.steps);
      if (last && (last.error || (last.run && last.run.status !== "completed"))) setOutcome({ run: last.run, error: last.error });
      setLive(null);
      setStopping(false);
    }).catch((error) => {
      if (controller.signal.aborted) return;
      setLive((state) => ({ ...(state ?? emptyRun()), error: describe(error), ended: true }));
    });
  }, [api, loadStored]);

  useEffect(() => {
    if (!threadId) return;
    let live = true;
    setLoading(true);
    const started = startedRuns.get(threadId);
    startedRuns.delete(threadId);
    if (started) followRun(threadId, started);
    loadStored(threadId)
      .then((stored) => {
        if (!live) return;
        setThread(stored.thread);
        setMessages(stored.messages);
        setSteps(stored.steps);
        setLoadError(null);
        // A run still going (after a reload, or started from another tab): follow it from its
        // first event, which rebuilds the answer written so far.
        const active = stored.runs.find((run) => ACTIVE_RUN.has(run.status));
        if (active && active.id !== started) followRun(threadId, active.id);
      })
      .catch((error) => live && setLoadError(error instanceof ApiError && error.status === 404
        ? "This chat does not exist (or was deleted)." : describe(error)))
      .finally(() => live && setLoading(false));
    return () => {
      live = false;
      following.current?.abort();
    };
  }, [threadId]);

  const running = Boolean(live && !live.ended && (!live.run || ACTIVE_RUN.has(live.run.status)));

  const stop = useCallback(() => {
    if (!live?.run || !threadId || stopping || !running) return false;
    setStopping(true);
    api.post(`/threads/${threadId}/runs/${live.run.id}/cancel`).catch((error) => {
      setStopping(false);
      notify("error", `Could not stop: ${describe(error)}`);
    });
    return true;
  }, [api, live, threadId, stopping, running]);

  useEffect(() => {
    chatActions.current.stop = stop;
    return () => {
      if (chatActions.current.stop === stop) chatActions.current.stop = undefined;
    };
  }, [stop]);

  const liveText = live?.messages.map((m) => m.content.map((p) => (p.type === "text" ? p.text.value.length : 0)).join()).join();
  useEffect(() => {
    end.current?.scrollIntoView?.({ block: "end" });
  }, [messages.length, liveText, pending]);

  const attach = (files: FileList | File[]) => {
    for (const file of Array.from(files)) {
      const key = ++attachmentCounter;
      const image = file.type.startsWith("image/");
      setAttachments((list) => [...list, { key, name: file.name, image, progress: 0, fileId: null, error: null }]);
      const form = new FormData();
      form.append("purpose", image ? "vision" : "assistants");
      form.append("file", file);
      api.upload<{ id: string }>("/files", form, (progress) =>
        setAttachments((list) => list.map((a) => (a.key === key ? { ...a, progress } : a))))
        .then((uploaded) => setAttachments((list) => list.map((a) => (a.key === key ? { ...a, progress: 1, fileId: uploaded.id } : a))))
        .catch((error) => setAttachments((list) => list.map((a) => (a.key === key ? { ...a, error: describe(error) } : a))));
    }
  };

  const send = async (text: string): Promise<boolean> => {
    if (!target) {
      notify("error", "Choose an assistant or a model first.");
      return false;
    }
    const missing = variableNames.filter((name) => !(props.variables[name] ?? "").trim());
    if (missing.length) {
      notify("error", `Fill in the assistant's variables first: ${missing.join(", ")}.`);
      return false;
    }
    const ready = attachments.filter((a) => a.fileId);
    const content = [{ type: "text", text }, ...ready.filter((a) => a.image).map((a) => ({ type: "image_file", image_file: { file_id: a.fileId } }))];
    const files = ready.filter((a) => !a.image).map((a) => ({ file_id: a.fileId, tools: [{ type: "file_search" }] }));
    setPending({ id: "pending", role: "user", content: [{ type: "text", text: { value: text, annotations: [] } }], run_id: null, created_at: Date.now() / 1000 });
    try {
      let id = threadId;
      const assistantId = target.kind === "assistant" ? target.id : await modelChatAssistant(api, choices.modelChat, target.id);
      if (!id) {
        const created = await api.post<Thread>("/parley/threads", {
          title: text.replace(/\s+/g, " ").trim().slice(0, 80),
          assistant_id: assistantId,
          metadata: target.kind === "model" ? { [THREAD_MODEL_KEY]: target.id } : {},
        });
        id = created.id;
        props.onThreadCreated(created);
      }
      const run = await api.post<Run>(`/threads/${id}/runs`, {
        assistant_id: assistantId,
        ...(target.kind === "model" ? { model: target.id } : {}),
        ...(variableNames.length ? { variables: Object.fromEntries(variableNames.map((n) => [n, props.variables[n]])) } : {}),
        additional_messages: [{ role: "user", content, ...(files.length ? { attachments: files } : {}) }],
      });
      setAttachments([]);
      if (id !== threadId) {
        startedRuns.set(id, run.id);
        navigate(`/chat/${id}`);
        return true;
      }
      followRun(id, run.id);
      const stored = await loadStored(id);
      setMessages(stored.messages);
      setSteps(stored.steps);
      return true;
    } catch (error) {
      notify("error", `Not sent: ${describe(error)}`);
      return false;
    } finally {
      setPending(null);
    }
  };

  const exportAs = async (format: "markdown" | "json") => {
    if (!threadId) return;
    try {
      const { blob, filename } = await api.download(`/parley/threads/${threadId}/export?format=${format}`);
      saveBlob(blob, filename ?? `${threadId}.${format === "markdown" ? "md" : "json"}`);
    } catch (error) {
      notify("error", `Export failed: ${describe(error)}`);
    }
  };

  // The timeline: stored messages with each run's tool steps before its first message, then
  // what the live run has written that is not stored yet.
  const storedIds = new Set(messages.map((m) => m.id));
  const liveRunId = live?.run?.id ?? null;
  const shownRuns = new Set<string>();
  const timeline: preact.JSX.Element[] = [];
  for (const message of messages) {
    if (message.run_id && !shownRuns.has(message.run_id)) {
      shownRuns.add(message.run_id);
      timeline.push(<StepsView key={`steps-${message.run_id}`} steps={message.run_id === liveRunId ? live!.steps : steps[message.run_id] ?? []} />);
    }
    timeline.push(<MessageView key={message.id} threadId={threadId} message={message} />);
  }
  if (pending) timeline.push(<MessageView key="pending" threadId={null} message={pending} pending />);
  if (live) {
    if (liveRunId && !shownRuns.has(liveRunId)) timeline.push(<StepsView key={`steps-${liveRunId}`} steps={live.steps} />);
    for (const message of live.messages.filter((m) => !storedIds.has(m.id))) {
      timeline.push(<MessageView key={message.id} threadId={threadId} message={message} streaming={message.status !== "completed"} />);
    }
  }
  const typing = running && live?.run?.status !== "requires_action" && live?.run?.status !== "cancelling";

  const picker = (
    <div class="picker">
      <label for="target">Chat with</label>
      <select id="target" data-testid="target-picker" value={encodeTarget(target)} disabled={choices.loading}
        onChange={(e) => setChosen(decodeTarget((e.target as HTMLSelectElement).value))}>
        {choices.loading && <option value="">Loading…</option>}
        {!choices.loading && !target && <option value="">Nothing to chat with</option>}
        {choices.assistants.length > 0 && (
          <optgroup label="Assistants">
            {choices.assistants.map((a) => <option key={a.id} value={`assistant:${a.id}`}>{a.name || a.id} ({a.model})</option>)}
          </optgroup>
        )}
        {choices.models.length > 0 && (
          <optgroup label="Models">
            {choices.models.map((m) => <option key={m.id} value={`model:${m.id}`}>{modelLabel(m)}</option>)}
          </optgroup>
        )}
      </select>
    </div>
  );

  return (
    <section class={dragging ? "conversation dragging" : "conversation"} aria-label="Conversation" {...dropHandlers}
      data-testid="conversation">
      <header class="conversation-header">
        <h1 class="conversation-title" data-testid="conversation-title">{threadId ? thread?.title || "Untitled chat" : "New chat"}</h1>
        {picker}
        {variableNames.length > 0 && (
          <fieldset class="variables">
            <legend>Variables</legend>
            {variableNames.map((name) => (
              <span key={name} class="variable">
                <label for={`var-${name}`}>{name}</label>
                <input id={`var-${name}`} value={props.variables[name] ?? ""} data-testid={`variable-${name}`}
                  onInput={(e) => props.setVariables({ ...props.variables, [name]: (e.target as HTMLInputElement).value })} />
              </span>
            ))}
          </fieldset>
        )}
        {threadId && (
          <div class="export">
            <button type="button" class="button small" onClick={() => exportAs("markdown")} data-testid="export-markdown">Export Markdown</button>
            <button type="button" class="button small" onClick={() => exportAs("json")} data-testid="export-json">Export JSON</button>
          </div>
        )}
      </header>
      {connection === "reconnecting" && running && (
        <p class="banner" role="status" data-testid="reconnecting">Connection lost: reconnecting… (nothing written so far is lost)</p>
      )}
      <div class="timeline" aria-live="off" aria-busy={loading}>
        {loading && <p class="muted loading" data-testid="loading">Loading the conversation…</p>}
        {loadError && <p class="error" role="alert">{loadError}</p>}
        {!loading && !loadError && messages.length === 0 && !pending && !live && (
          <div class="empty">
            <p>{threadId ? "No messages yet." : "Start a conversation: write a message below."}</p>
            {choices.error && <p class="error">{choices.error}</p>}
            {!choices.loading && !target && !choices.error && (
              <p>There is nothing to chat with yet: <Link href="/assistants">create an assistant</Link>.</p>
            )}
          </div>
        )}
        {timeline}
        {typing && (
          <div class="typing" role="status" data-testid="typing-indicator">
            <span class="dots" aria-hidden="true"><span /><span /><span /></span>
            <span>Assistant is writing…</span>
          </div>
        )}
        {live?.run?.status === "requires_action" && threadId && (
          <FunctionCallForm key={live.run.id} threadId={threadId} run={live.run} onError={(text) => notify("error", text)} />
        )}
        {(live ?? outcome)?.error && <p class="error" role="alert" data-testid="run-error">{(live ?? outcome)!.error}</p>}
        {(() => {
          const ended = live?.run ?? outcome?.run;
          if (!ended || !["failed", "cancelled", "incomplete", "expired"].includes(ended.status)) return null;
          return (
            <p class="muted" data-testid="run-status">
              The run {ended.status === "cancelled" ? "was stopped" : ended.status}
              {ended.last_error ? `: ${ended.last_error.message}` : "."}
            </p>
          );
        })()}
        <div ref={end} />
      </div>
      {dragging && <div class="drop-hint" aria-hidden="true">Drop files to attach them</div>}
      <Composer disabled={Boolean(loadError) || loading} running={running} stopping={stopping}
        attachments={attachments} onAttach={attach} onRemove={(key) => setAttachments((list) => list.filter((a) => a.key !== key))}
        onSend={send} onStop={stop} />
    </section>
  );
}

export function Chat(props: { threadId: string | null }) {
  const { chatActions } = useConsole();
  const [, navigate] = useLocation();
  const [query, setQuery] = useState("");
  const [version, setVersion] = useState(0);
  const sessions = useSessions(query, version);
  const choices = useChoices();
  const [variables, setVariables] = useState<Record<string, Record<string, string>>>({});
  const key = props.threadId ?? "new";
  const preselected = new URLSearchParams(useSearch()).get("assistant");

  useEffect(() => {
    chatActions.current.move = (by: number) => {
      const items = sessions.items;
      if (!items.length) return false;
      const index = items.findIndex((t) => t.id === props.threadId);
      const next = index < 0 ? (by > 0 ? 0 : items.length - 1) : index + by;
      if (next < 0 || next >= items.length) return true;
      navigate(`/chat/${items[next].id}`);
      return true;
    };
    return () => {
      chatActions.current.move = undefined;
    };
  }, [sessions.items, props.threadId]);

  return (
    <div class="chat">
      <aside class="sidebar" aria-label="Chats">
        <Link href="/chat" class="button primary new-chat" data-testid="new-chat">New chat</Link>
        <div class="search">
          <label for="session-search">Search chats</label>
          <input id="session-search" type="search" value={query} placeholder="Title contains…" data-testid="session-search"
            onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
        </div>
        <ul class="sessions" data-testid="sessions" aria-busy={sessions.loading}>
          {sessions.items.map((thread) => (
            <SessionItem key={thread.id} thread={thread} active={thread.id === props.threadId}
              onChanged={() => setVersion((v) => v + 1)} />
          ))}
        </ul>
        {sessions.loading && <p class="muted" data-testid="sessions-loading">Loading chats…</p>}
        {!sessions.loading && sessions.error && <p class="error" role="alert">{sessions.error}</p>}
        {!sessions.loading && !sessions.error && sessions.items.length === 0 && (
          <p class="muted">{query ? "No chat title matches." : "No chats yet."}</p>
        )}
        {sessions.next && !sessions.loading && (
          <button type="button" class="button small" onClick={() => sessions.more()} data-testid="sessions-more">Load more</button>
        )}
      </aside>
      <Conversation key={key} threadId={props.threadId} choices={choices}
        preselect={preselected ? { kind: "assistant", id: preselected } : null}
        variables={variables[key] ?? variables.new ?? {}}
        setVariables={(values) => setVariables((all) => ({ ...all, [key]: values }))}
        onThreadCreated={(thread) => {
          setVariables((all) => ({ ...all, [thread.id]: all.new ?? {} }));
          setVersion((v) => v + 1);
        }} />
    </div>
  );
}
