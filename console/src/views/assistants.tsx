// Assistants: create and edit (model, instructions with {{variables}}, tools and functions,
// the vector stores file search reads), delete, and start a chat with one.
import { useEffect, useState } from "preact/hooks";
import { Link, useLocation } from "wouter-preact";
import { describe, type Page } from "../api";
import { useConsole } from "../app";
import { MODEL_CHAT_KEY, type Assistant, type FunctionTool, type Model, type Tool, type VectorStore } from "../types";
import { modelLabel, templateVariables } from "./chat";

interface Draft {
  name: string;
  description: string;
  model: string;
  instructions: string;
  fileSearch: boolean;
  codeInterpreter: boolean;
  functions: string;
  vectorStores: string[];
  temperature: string;
}

const EXAMPLE_FUNCTIONS = `[
  {"name": "get_weather", "description": "The weather of a city",
   "parameters": {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}}
]`;

function draftOf(assistant: Assistant | null, models: Model[]): Draft {
  const functions = (assistant?.tools ?? []).filter((t): t is FunctionTool => t.type === "function").map((t) => t.function);
  return {
    name: assistant?.name ?? "",
    description: assistant?.description ?? "",
    model: assistant?.model ?? models[0]?.id ?? "",
    instructions: assistant?.instructions ?? "",
    fileSearch: Boolean(assistant?.tools.some((t) => t.type === "file_search")),
    codeInterpreter: Boolean(assistant?.tools.some((t) => t.type === "code_interpreter")),
    functions: functions.length ? JSON.stringify(functions, null, 2) : "",
    vectorStores: assistant?.tool_resources?.file_search?.vector_store_ids ?? [],
    temperature: assistant?.temperature != null ? String(assistant.temperature) : "",
  };
}

function bodyOf(draft: Draft): { body?: Record<string, unknown>; error?: string } {
  const tools: Tool[] = [];
  if (draft.fileSearch) tools.push({ type: "file_search" });
  if (draft.codeInterpreter) tools.push({ type: "code_interpreter" });
  if (draft.functions.trim()) {
    let parsed: unknown;
    try {
      parsed = JSON.parse(draft.functions);
    } catch (error) {
      return { error: `Functions: not valid JSON (${(error as Error).message}).` };
    }
    if (!Array.isArray(parsed) || parsed.some((f) => typeof f?.name !== "string")) {
      return { error: "Functions: expected a list of objects, each with a \"name\"." };
    }
    for (const fn of parsed) tools.push({ type: "function", function: fn });
  }
  const temperature = draft.temperature.trim() === "" ? null : Number(draft.temperature);
  if (temperature !== null && (Number.isNaN(temperature) || temperature < 0 || temperature > 2)) {
    return { error: "Temperature: a number from 0 to 2, or empty for the model's default." };
  }
  if (!draft.model) return { error: "Choose a model." };
  return {
    body: {
      name: draft.name, description: draft.description, model: draft.model, instructions: draft.instructions, tools,
      tool_resources: { file_search: { vector_store_ids: draft.fileSearch ? draft.vectorStores : [] } },
      temperature,
    },
  };
}

function Editor(props: { assistant: Assistant | null; models: Model[]; stores: VectorStore[]; onSaved: (a: Assistant) => void; onDeleted: () => void }) {
  const { api, notify } = useConsole();
  const [draft, setDraft] = useState<Draft>(() => draftOf(props.assistant, props.models));
  const [saving, setSaving] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);
  const [confirming, setConfirming] = useState(false);
  const set = (patch: Partial<Draft>) => setDraft((d) => ({ ...d, ...patch }));
  const variables = templateVariables(draft.instructions);

  const save = async (event: Event) => {
    event.preventDefault();
    const { body, error } = bodyOf(draft);
    if (error) {
      setProblem(error);
      return;
    }
    setSaving(true);
    setProblem(null);
    try {
      const saved = await api.post<Assistant>(props.assistant ? `/assistants/${props.assistant.id}` : "/assistants", body);
      notify("info", `Saved ${saved.name || saved.id}.`);
      props.onSaved(saved);
    } catch (failure) {
      setProblem(describe(failure));
    } finally {
      setSaving(false);
    }
  };
  const remove = async () => {
    if (!props.assistant) return;
    try {
      await api.delete(`/assistants/${props.assistant.id}`);
      notify("info", "Assistant deleted.");
      props.onDeleted();
    } catch (failure) {
      notify("error", `Not deleted: ${describe(failure)}`);
    }
  };

  return (
    <form class="editor stack" onSubmit={save} aria-labelledby="editor-title" data-testid="assistant-editor" aria-busy={saving}>
      <h2 id="editor-title">{props.assistant ? `Edit ${props.assistant.name || "assistant"}` : "New assistant"}</h2>
      <div class="field">
        <label for="assistant-name">Name</label>
        <input id="assistant-name" value={draft.name} maxLength={256} onInput={(e) => set({ name: (e.target as HTMLInputElement).value })} />
      </div>
      <div class="field">
        <label for="assistant-description">Description</label>
        <input id="assistant-description" value={draft.description} maxLength={512}
          onInput={(e) => set({ description: (e.target as HTMLInputElement).value })} />
      </div>
      <div class="field">
        <label for="assistant-model">Model</label>
        <select id="assistant-model" value={draft.model} onChange={(e) => set({ model: (e.target as HTMLSelectElement).value })}>
          {!props.models.some((m) => m.id === draft.model) && draft.model && <option value={draft.model}>{draft.model}</option>}
          {props.models.map((m) => <option key={m.id} value={m.id}>{modelLabel(m)}</option>)}
        </select>
      </div>
      <div class="field">
        <label for="assistant-instructions">Instructions</label>
        <textarea id="assistant-instructions" rows={6} value={draft.instructions} aria-describedby="instructions-help"
          onInput={(e) => set({ instructions: (e.target as HTMLTextAreaElement).value })} />
        <p id="instructions-help" class="hint">
          Template variables are written <code>{"{{name}}"}</code>; a chat asks for their values.
          {variables.length > 0 && <> Variables: {variables.map((v) => <code key={v}>{v}</code>)}</>}
        </p>
      </div>
      <fieldset>
        <legend>Tools</legend>
        <label class="check"><input type="checkbox" checked={draft.fileSearch} onChange={(e) => set({ fileSearch: (e.target as HTMLInputElement).checked })} /> File search</label>
        <label class="check"><input type="checkbox" checked={draft.codeInterpreter} onChange={(e) => set({ codeInterpreter: (e.target as HTMLInputElement).checked })} /> Code interpreter</label>
      </fieldset>
      {draft.fileSearch && (
        <fieldset>
          <legend>Vector stores file search reads</legend>
          {props.stores.length === 0 && <p class="muted">No vector stores yet: <Link href="/files">create one under Files</Link>.</p>}
          {props.stores.map((store) => (
            <label key={store.id} class="check">
              <input type="checkbox" checked={draft.vectorStores.includes(store.id)} onChange={(e) => set({
                vectorStores: (e.target as HTMLInputElement).checked ? [...draft.vectorStores, store.id] : draft.vectorStores.filter((v) => v !== store.id),
              })} /> {store.name || store.id}
            </label>
          ))}
        </fieldset>
      )}
      <div class="field">
        <label for="assistant-functions">Functions (JSON list of function definitions)</label>
        <textarea id="assistant-functions" rows={5} class="code" value={draft.functions} placeholder={EXAMPLE_FUNCTIONS}
          onInput={(e) => set({ functions: (e.target as HTMLTextAreaElement).value })} />
      </div>
      <div class="field narrow">
        <label for="assistant-temperature">Temperature</label>
        <input id="assistant-temperature" inputMode="decimal" value={draft.temperature} placeholder="model default"
          onInput={(e) => set({ temperature: (e.target as HTMLInputElement).value })} />
      </div>
      {problem && <p class="error" role="alert" data-testid="editor-error">{problem}</p>}
      <div class="row">
        <button type="submit" class="button primary" disabled={saving} data-testid="save-assistant">{saving ? "Saving…" : props.assistant ? "Save" : "Create"}</button>
        {props.assistant && <Link class="button" href={`/chat?assistant=${props.assistant.id}`}>Chat with it</Link>}
        {props.assistant && !confirming && <button type="button" class="button danger" onClick={() => setConfirming(true)}>Delete</button>}
        {confirming && (
          <>
            <button type="button" class="button danger" onClick={remove}>Delete for good</button>
            <button type="button" class="button" onClick={() => setConfirming(false)}>Keep</button>
          </>
        )}
      </div>
    </form>
  );
}

export function Assistants(props: { assistantId: string | null }) {
  const { api } = useConsole();
  const [, navigate] = useLocation();
  const [assistants, setAssistants] = useState<Assistant[] | null>(null);
  const [models, setModels] = useState<Model[]>([]);
  const [stores, setStores] = useState<VectorStore[]>([]);
  const [error, setError] = useState<string | null>(null);
  const [version, setVersion] = useState(0);

  useEffect(() => {
    Promise.all([
      api.get<Page<Assistant>>("/assistants?limit=100"),
      api.get<Page<Model>>("/parley/models"),
      api.get<Page<VectorStore>>("/vector_stores?limit=100"),
    ]).then(([a, m, v]) => {
      setAssistants(a.data);
      setModels(m.data.filter((model) => !model.capabilities.includes("embeddings") && model.availability !== "unconfigured"));
      setStores(v.data);
    }).catch((failure) => setError(describe(failure)));
  }, [api, version]);

  const selected = props.assistantId && assistants ? assistants.find((a) => a.id === props.assistantId) ?? null : null;
  return (
    <div class="split">
      <aside class="sidebar" aria-label="Assistants">
        <Link href="/assistants" class="button primary" data-testid="new-assistant">New assistant</Link>
        {!assistants && !error && <p class="muted" aria-busy="true">Loading assistants…</p>}
        {error && <p class="error" role="alert">{error}</p>}
        {assistants && assistants.length === 0 && <p class="muted">No assistants yet.</p>}
        <ul class="list">
          {assistants?.map((a) => (
            <li key={a.id} class={a.id === props.assistantId ? "active" : ""}>
              <Link href={`/assistants/${a.id}`} aria-current={a.id === props.assistantId ? "page" : undefined} data-testid="assistant-item">
                <span class="item-title">{a.name || "Unnamed assistant"}</span>
                <span class="item-meta">{a.model}{a.metadata?.[MODEL_CHAT_KEY] ? " · the console's model chats" : ""}</span>
              </Link>
            </li>
          ))}
        </ul>
      </aside>
      <section class="content" aria-label="Assistant">
        {props.assistantId && assistants && !selected && <p class="error" role="alert">This assistant does not exist (or was deleted).</p>}
        {assistants && (!props.assistantId || selected) && (
          <Editor key={`${props.assistantId ?? "new"}:${models.length}`} assistant={selected} models={models} stores={stores}
            onSaved={(saved) => {
              setVersion((v) => v + 1);
              navigate(`/assistants/${saved.id}`);
            }}
            onDeleted={() => {
              setVersion((v) => v + 1);
              navigate("/assistants");
            }} />
        )}
      </section>
    </div>
  );
}
