// The API objects the console reads: OpenAI's shapes (as the edge serves them) and Parley's
// extensions (object "parley.*").

export interface Annotation {
  type: "file_citation" | "file_path";
  text: string;
  start_index: number;
  end_index: number;
  index?: number;
  file_citation?: { file_id: string; quote?: string; file_name?: string; page?: number | null };
  file_path?: { file_id: string };
}

export type ContentPart =
  | { type: "text"; text: { value: string; annotations: Annotation[] } }
  | { type: "image_file"; image_file: { file_id: string } }
  | { type: "image_url"; image_url: { url: string } };

export interface Feedback {
  rating: "thumbs_up" | "thumbs_down" | null;
  comment: string;
}

export interface Message {
  id: string;
  role: "user" | "assistant";
  content: ContentPart[];
  run_id: string | null;
  created_at: number;
  attachments?: { file_id: string }[];
  feedback?: Feedback | null;
  status?: string;
}

export interface FunctionCall {
  name?: string;
  arguments: string;
  output?: string | null;
}

export interface FileSearchResult {
  file_id: string;
  file_name: string;
  score: number;
  content?: { type: string; text: string }[];
}

export type CodeOutput = { type: "logs"; logs: string } | { type: "image"; image: { file_id: string } };

export interface ToolCall {
  id?: string;
  index?: number;
  type: "function" | "file_search" | "code_interpreter";
  function?: FunctionCall;
  file_search?: { results?: FileSearchResult[] };
  code_interpreter?: { input: string; outputs: CodeOutput[] };
}

export interface Step {
  id: string;
  run_id: string;
  type: "tool_calls" | "message_creation";
  status: string;
  created_at: number;
  step_details: { type: string; tool_calls?: ToolCall[]; message_creation?: { message_id: string } };
  last_error?: { message: string } | null;
}

export interface RequiredCall {
  id: string;
  type: "function";
  function: { name: string; arguments: string };
}

export interface Run {
  id: string;
  thread_id: string;
  assistant_id: string;
  status: string;
  model: string;
  created_at: number;
  required_action: { submit_tool_outputs: { tool_calls: RequiredCall[] } } | null;
  last_error: { code: string; message: string } | null;
}

export interface Thread {
  id: string;
  title: string;
  status: string;
  created_at: number;
  updated_at: number;
  message_count: number;
  assistant_id: string | null;
  metadata: Record<string, string>;
}

export interface FunctionTool {
  type: "function";
  function: { name: string; description?: string; parameters?: unknown };
}

export type Tool = { type: "file_search" } | { type: "code_interpreter" } | FunctionTool;

export interface Assistant {
  id: string;
  name: string | null;
  description: string | null;
  model: string;
  instructions: string | null;
  tools: Tool[];
  tool_resources: { file_search?: { vector_store_ids?: string[] } } | null;
  metadata: Record<string, string>;
  temperature: number | null;
  created_at: number;
}

export interface Model {
  id: string;
  provider: string;
  display_name: string;
  capabilities: string[];
  availability: string;
  context_window: number;
}

export interface FileObject {
  id: string;
  filename: string;
  bytes: number;
  purpose: string;
  status: "uploaded" | "processed" | "error";
  status_details: string | null;
  created_at: number;
}

export interface VectorStore {
  id: string;
  name: string;
  status: string;
  file_counts: { in_progress: number; completed: number; failed: number; total: number };
  created_at: number;
}

export interface VectorStoreFile {
  id: string;
  status: "in_progress" | "completed" | "failed" | "cancelled";
  last_error: { message: string } | null;
}

export interface SearchResult {
  file_id: string;
  filename: string;
  score: number;
  content: { type: string; text: string }[];
  attributes?: Record<string, unknown>;
}

export interface UsageRow {
  model?: string;
  day?: string;
  user?: string;
  requests: number;
  errors: number;
  input_tokens: number;
  output_tokens: number;
  total_tokens: number;
  cost_usd: number;
}

export interface Usage {
  rows: UsageRow[];
  total: UsageRow;
  start_time: number;
  end_time: number;
}

export interface BudgetLimit {
  period: "day" | "week" | "month";
  unit: "usd" | "tokens";
  amount: number;
  spent: number;
  resets_at: number | null;
  admin_set: boolean;
}

export interface Budget {
  user: string;
  limits: BudgetLimit[];
}

// The assistant the console runs plain model chats through (a run needs an assistant).
export const MODEL_CHAT_KEY = "parley_console";
export const MODEL_CHAT_VALUE = "model_chat";
export const THREAD_MODEL_KEY = "parley_console_model";

export const ACTIVE_RUN = new Set(["queued", "in_progress", "requires_action", "cancelling"]);
