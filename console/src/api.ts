// The console's only way to the server: the REST edge's /v1 API on this origin, with the
// signed-in credential as `Authorization: Bearer` (never in a URL). Errors arrive in OpenAI's
// shape and become ApiError; run streams are server-sent events read through fetch (EventSource
// cannot send a header).
import { EventSourceParserStream } from "eventsource-parser/stream";

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly code: string | null = null,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

export interface SseEvent {
  id?: string;
  event?: string;
  data: string;
}

export interface Page<T> {
  data: T[];
  next_page_token?: string | null;
  has_more?: boolean;
}

const BASE = "/v1";

async function errorOf(response: Response): Promise<ApiError> {
  let message = `${response.status} ${response.statusText}`;
  let code: string | null = null;
  let param: string | null = null;
  try {
    const body = await response.json();
    if (body?.error?.message) {
      message = body.error.message;
      code = body.error.code ?? null;
      param = body.error.param ?? null;
    }
  } catch {
    // not JSON: keep the status line
  }
  return new ApiError(response.status, message, code, param);
}

function networkError(error: unknown): ApiError {
  if (error instanceof DOMException && error.name === "AbortError") throw error;
  return new ApiError(0, "Cannot reach Parley: the network or the server is down. Retrying may help.", "network");
}

export class Api {
  constructor(
    private readonly credential: string,
    private readonly onUnauthorized: (error: ApiError) => void = () => {},
  ) {}

  private headers(extra: Record<string, string> = {}): Record<string, string> {
    return { authorization: `Bearer ${this.credential}`, ...extra };
  }

  private async fetch(path: string, init: RequestInit): Promise<Response> {
    let response: Response;
    try {
      response = await fetch(BASE + path, { ...init, credentials: "omit", cache: "no-store" });
    } catch (error) {
      throw networkError(error);
    }
    if (!response.ok) {
      const error = await errorOf(response);
      if (response.status === 401) this.onUnauthorized(error);
      throw error;
    }
    return response;
  }

  async request<T>(method: string, path: string, body?: unknown, signal?: AbortSignal): Promise<T> {
    const response = await this.fetch(path, {
      method,
      signal,
      headers: this.headers(body === undefined ? {} : { "content-type": "application/json" }),
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    return (await response.json()) as T;
  }

  get<T>(path: string, signal?: AbortSignal): Promise<T> {
    return this.request<T>("GET", path, undefined, signal);
  }

  post<T>(path: string, body: unknown = {}, signal?: AbortSignal): Promise<T> {
    return this.request<T>("POST", path, body, signal);
  }

  delete<T>(path: string): Promise<T> {
    return this.request<T>("DELETE", path);
  }

  /** A server-sent event stream, event by event, until the server ends it. */
  async *events(path: string, signal: AbortSignal): AsyncGenerator<SseEvent> {
    const response = await this.fetch(path, { headers: this.headers({ accept: "text/event-stream" }), signal });
    const events = response.body!.pipeThrough(new TextDecoderStream()).pipeThrough(new EventSourceParserStream());
    const reader = events.getReader();
    try {
      for (;;) {
        let next: ReadableStreamReadResult<SseEvent>;
        try {
          next = await reader.read();
        } catch (error) {
          throw networkError(error);
        }
        if (next.done) return;
        yield next.value;
      }
    } finally {
      reader.cancel().catch(() => {});
    }
  }

  /** A multipart upload with progress (fetch cannot report upload progress; XMLHttpRequest can). */
  upload<T>(path: string, form: FormData, onProgress: (fraction: number) => void, signal?: AbortSignal): Promise<T> {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open("POST", BASE + path);
      xhr.setRequestHeader("authorization", `Bearer ${this.credential}`);
      xhr.responseType = "json";
      xhr.upload.onprogress = (event) => {
        if (event.lengthComputable && event.total > 0) onProgress(event.loaded / event.total);
      };
      xhr.onload = () => {
        if (xhr.status >= 200 && xhr.status < 300) {
          onProgress(1);
          resolve(xhr.response as T);
          return;
        }
        const error = xhr.response?.error;
        const failure = new ApiError(xhr.status, error?.message ?? `Upload failed (${xhr.status})`, error?.code ?? null);
        if (xhr.status === 401) this.onUnauthorized(failure);
        reject(failure);
      };
      xhr.onerror = () => reject(new ApiError(0, "The upload was interrupted: the network or the server is down.", "network"));
      xhr.onabort = () => reject(new DOMException("The upload was cancelled.", "AbortError"));
      signal?.addEventListener("abort", () => xhr.abort());
      xhr.send(form);
    });
  }

  /** A download as a Blob, with the server's suggested file name. */
  async download(path: string): Promise<{ blob: Blob; filename: string | null }> {
    const response = await this.fetch(path, { headers: this.headers() });
    const disposition = response.headers.get("content-disposition") ?? "";
    const match = /filename="?([^";]+)"?/.exec(disposition);
    return { blob: await response.blob(), filename: match ? match[1] : null };
  }
}

/** Offers `blob` to the person as a file download. */
export function saveBlob(blob: Blob, filename: string): void {
  const url = URL.createObjectURL(blob);
  const link = document.createElement("a");
  link.href = url;
  link.download = filename;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 10_000);
}

export function describe(error: unknown): string {
  if (error instanceof ApiError) {
    if (error.status === 401) return `Not signed in: ${error.message}`;
    if (error.status === 403) return `Not allowed: ${error.message}`;
    return error.message;
  }
  return error instanceof Error ? error.message : String(error);
}
