// A run as the console shows it while it runs: its status, its steps (tool calls as they are
// written) and the messages it is writing, built from the Assistants v2 events of
// GET /v1/parley/threads/{thread}/runs/{run}/events. `follow` keeps that stream going across
// network drops: it reconnects from the last sequence number it has (the events' `id:`), so
// every event is applied once and no text is repeated.
import type { Api, SseEvent } from "./api";
import { ApiError } from "./api";
import type { Annotation, ContentPart, Message, Run, Step, ToolCall } from "./types";

export interface LiveRun {
  run: Run | null;
  steps: Step[];
  messages: Message[];
  error: string | null;
  // The last run event sequence applied; a reconnect asks for what follows it.
  sequence: number;
  ended: boolean;
}

export const emptyRun = (): LiveRun => ({ run: null, steps: [], messages: [], error: null, sequence: 0, ended: false });

function upsert<T extends { id: string }>(items: T[], item: T): T[] {
  const index = items.findIndex((existing) => existing.id === item.id);
  if (index < 0) return [...items, item];
  const copy = items.slice();
  copy[index] = item;
  return copy;
}

function mergeCall(current: ToolCall | undefined, delta: ToolCall): ToolCall {
  const call: ToolCall = current ? { ...current } : { type: delta.type, index: delta.index };
  if (delta.id) call.id = delta.id;
  if (delta.type) call.type = delta.type;
  if (delta.function) {
    const previous = call.function ?? { arguments: "" };
    call.function = {
      name: delta.function.name ?? previous.name,
      arguments: previous.arguments + (delta.function.arguments ?? ""),
      output: delta.function.output ?? previous.output ?? null,
    };
  }
  if (delta.code_interpreter) {
    const previous = call.code_interpreter ?? { input: "", outputs: [] };
    const outputs = previous.outputs.slice();
    for (const output of delta.code_interpreter.outputs ?? []) {
      const last = outputs[outputs.length - 1];
      if (output.type === "logs" && last?.type === "logs") outputs[outputs.length - 1] = { type: "logs", logs: last.logs + output.logs };
      else outputs.push(output);
    }
    call.code_interpreter = { input: previous.input + (delta.code_interpreter.input ?? ""), outputs };
  }
  if (delta.file_search) call.file_search = { ...call.file_search, ...delta.file_search };
  return call;
}

function appendText(message: Message, index: number, value: string, annotations: Annotation[]): Message {
  const content: ContentPart[] = message.content.slice();
  while (content.length <= index) content.push({ type: "text", text: { value: "", annotations: [] } });
  const part = content[index];
  if (part.type !== "text") return message;
  content[index] = { type: "text", text: { value: part.text.value + value, annotations: [...part.text.annotations, ...annotations] } };
  return { ...message, content };
}

/** The run after one more event. Applying an event twice leaves the run as applying it once,
 * except text and argument deltas: those are guarded by their sequence number (see follow). */
export function apply(state: LiveRun, name: string, data: unknown): LiveRun {
  const body = data as Record<string, any>;
  if (name.startsWith("thread.run.step.")) {
    if (name === "thread.run.step.delta") {
      const step = state.steps.find((s) => s.id === body.id);
      if (!step) return state;
      const calls = (step.step_details.tool_calls ?? []).slice();
      for (const delta of body.delta?.step_details?.tool_calls ?? []) {
        const position = calls.findIndex((c) => c.index === delta.index);
        const merged = mergeCall(position >= 0 ? calls[position] : undefined, delta);
        if (position >= 0) calls[position] = merged;
        else calls.push(merged);
      }
      return { ...state, steps: upsert(state.steps, { ...step, step_details: { ...step.step_details, tool_calls: calls } }) };
    }
    const known = state.steps.find((s) => s.id === body.id);
    if (name === "thread.run.step.created" || name === "thread.run.step.in_progress") {
      // A repeat keeps what the deltas built.
      return known ? state : { ...state, steps: upsert(state.steps, body as Step) };
    }
    return { ...state, steps: upsert(state.steps, body as Step) }; // completed/failed/...: the whole step
  }
  if (name.startsWith("thread.run.")) {
    const run = body as Run;
    return { ...state, run, ended: !["queued", "in_progress", "requires_action", "cancelling"].includes(run.status) };
  }
  if (name === "thread.message.created" || name === "thread.message.in_progress") {
    if (state.messages.some((m) => m.id === body.id)) return state;
    return { ...state, messages: [...state.messages, { ...(body as Message), content: [], status: "in_progress" }] };
  }
  if (name === "thread.message.delta") {
    const message = state.messages.find((m) => m.id === body.id);
    if (!message) return state;
    let updated = message;
    for (const part of body.delta?.content ?? []) {
      if (part.type === "text") updated = appendText(updated, part.index ?? 0, part.text?.value ?? "", part.text?.annotations ?? []);
    }
    return { ...state, messages: upsert(state.messages, updated) };
  }
  if (name === "thread.message.completed") {
    return { ...state, messages: upsert(state.messages, { ...(body as Message), status: "completed" }) };
  }
  if (name === "error") {
    return { ...state, error: body?.message ?? "The run failed." };
  }
  return state;
}

export type Connection = "connecting" | "live" | "reconnecting" | "closed";

export interface FollowOptions {
  // The sequence already applied (0: from the run's first event).
  after: number;
  onEvent: (name: string, data: unknown, sequence: number | null) => void;
  onConnection: (state: Connection) => void;
  signal: AbortSignal;
}

const sleep = (ms: number, signal: AbortSignal) =>
  new Promise<void>((resolve) => {
    const timer = setTimeout(resolve, ms);
    signal.addEventListener("abort", () => {
      clearTimeout(timer);
      resolve();
    });
  });

/** Follows a run's events until it ends (`done`), reconnecting after drops from the last
 * sequence seen. Events whose sequence is not past it are skipped: nothing is applied twice. */
export async function follow(api: Api, threadId: string, runId: string, options: FollowOptions): Promise<void> {
  let after = options.after;
  let attempt = 0;
  while (!options.signal.aborted) {
    options.onConnection(attempt === 0 ? "connecting" : "reconnecting");
    try {
      const path = `/parley/threads/${threadId}/runs/${runId}/events?after_sequence=${after}`;
      for await (const event of api.events(path, options.signal) as AsyncGenerator<SseEvent>) {
        attempt = 0;
        options.onConnection("live");
        const sequence = event.id ? Number(event.id) : null;
        if (sequence !== null && sequence <= after) continue;
        if (event.event === "done") {
          options.onConnection("closed");
          return;
        }
        options.onEvent(event.event ?? "message", JSON.parse(event.data), sequence);
        if (sequence !== null) after = sequence;
      }
    } catch (error) {
      if (options.signal.aborted) break;
      // A refusal (the run is gone, the key is wrong) is final; a drop is retried.
      if (error instanceof ApiError && error.status >= 400 && error.status < 500 && error.status !== 429) throw error;
      if (!(error instanceof ApiError)) throw error;
    }
    attempt += 1;
    options.onConnection("reconnecting");
    await sleep(Math.min(250 * 2 ** attempt, 4000), options.signal);
  }
  options.onConnection("closed");
}
