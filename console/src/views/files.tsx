// Files and vector stores: create a store, upload files into it (progress bar, then the
// status until processed), try a search; every file, and one file's page (where citations link).
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import { Link, useLocation, useSearch } from "wouter-preact";
import { describe, saveBlob, type Page } from "../api";
import { useConsole } from "../app";
import type { FileObject, SearchResult, VectorStore, VectorStoreFile } from "../types";
import { useFileDrop } from "../filedrop";
import { FileImage } from "./messages";

export function size(bytes: number): string {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

const STATUS_LABEL: Record<string, string> = { in_progress: "processing", completed: "processed", failed: "failed", cancelled: "cancelled" };

interface Upload {
  key: number;
  name: string;
  progress: number;
  fileId: string | null;
  status: string; // uploading, processing, processed, failed
  error: string | null;
}

let uploadCounter = 0;
const sleep = (ms: number) => new Promise((resolve) => setTimeout(resolve, ms));

function StoreView(props: { store: VectorStore; files: Map<string, FileObject>; onChanged: () => void }) {
  const { api, notify } = useConsole();
  const [entries, setEntries] = useState<VectorStoreFile[] | null>(null);
  const [uploads, setUploads] = useState<Upload[]>([]);
  const [names, setNames] = useState<Map<string, FileObject>>(props.files);
  const [dragging, dropHandlers] = useFileDrop((files) => files.forEach((file) => upload(file)));
  const [query, setQuery] = useState("");
  const [results, setResults] = useState<SearchResult[] | null>(null);
  const [searching, setSearching] = useState(false);
  const picker = useRef<HTMLInputElement>(null);
  const mounted = useRef(true);
  useEffect(() => () => {
    mounted.current = false;
  }, []);

  const load = useCallback(async () => {
    const page = await api.get<Page<VectorStoreFile>>(`/vector_stores/${props.store.id}/files?limit=100`);
    const missing = page.data.filter((entry) => !names.has(entry.id));
    const fetched = await Promise.all(missing.map((entry) => api.get<FileObject>(`/files/${entry.id}`).catch(() => null)));
    if (!mounted.current) return;
    setNames((current) => {
      const next = new Map(current);
      for (const file of fetched) if (file) next.set(file.id, file);
      return next;
    });
    setEntries(page.data);
  }, [api, props.store.id]);

  useEffect(() => {
    load().catch((error) => notify("error", describe(error)));
  }, [load]);

  const update = (key: number, patch: Partial<Upload>) => setUploads((list) => list.map((u) => (u.key === key ? { ...u, ...patch } : u)));

  const upload = async (file: File) => {
    const key = ++uploadCounter;
    setUploads((list) => [...list, { key, name: file.name, progress: 0, fileId: null, status: "uploading", error: null }]);
    try {
      const form = new FormData();
      form.append("purpose", "assistants");
      form.append("file", file);
      const uploaded = await api.upload<FileObject>("/files", form, (progress) => update(key, { progress }));
      setNames((current) => new Map(current).set(uploaded.id, uploaded));
      update(key, { fileId: uploaded.id, status: "processing", progress: 1 });
      await api.post(`/vector_stores/${props.store.id}/files`, { file_id: uploaded.id });
      // Processing (extraction, chunking, embeddings) runs in the background: watch it end.
      for (let polls = 0; mounted.current && polls < 1200; polls++) {
        const entry = await api.get<VectorStoreFile>(`/vector_stores/${props.store.id}/files/${uploaded.id}`);
        if (entry.status !== "in_progress") {
          update(key, entry.status === "completed"
            ? { status: "processed" }
            : { status: "failed", error: entry.last_error?.message ?? "processing failed" });
          break;
        }
        await sleep(polls < 20 ? 250 : 1000);
      }
      load().catch(() => {});
      props.onChanged();
    } catch (error) {
      update(key, { status: "failed", error: describe(error) });
    }
  };

  const remove = async (fileId: string) => {
    try {
      await api.delete(`/vector_stores/${props.store.id}/files/${fileId}`);
      await load();
    } catch (error) {
      notify("error", `Not removed: ${describe(error)}`);
    }
  };

  const search = async (event: Event) => {
    event.preventDefault();
    if (!query.trim()) return;
    setSearching(true);
    try {
      const page = await api.post<Page<SearchResult>>(`/vector_stores/${props.store.id}/search`, { query, max_num_results: 10 });
      setResults(page.data);
    } catch (error) {
      notify("error", `Search failed: ${describe(error)}`);
    } finally {
      setSearching(false);
    }
  };

  return (
    <div class={dragging ? "store dragging" : "store"} data-testid="store-view" {...dropHandlers}>
      <h2>{props.store.name || props.store.id}</h2>
      <p class="muted">{props.store.id}</p>
      <div class="dropzone" data-testid="dropzone">
        <p>Drop files here to add them to this store, or</p>
        <button type="button" class="button" onClick={() => picker.current?.click()}>Choose files…</button>
        <input ref={picker} type="file" multiple class="visually-hidden" tabIndex={-1} aria-hidden="true" data-testid="store-upload-input"
          onChange={(e) => {
            const input = e.target as HTMLInputElement;
            for (const file of Array.from(input.files ?? [])) upload(file);
            input.value = "";
          }} />
      </div>
      {uploads.length > 0 && (
        <ul class="uploads" aria-label="Uploads">
          {uploads.map((u) => (
            <li key={u.key} data-testid="upload" data-status={u.status}>
              <span class="upload-name">{u.name}</span>
              {u.status === "uploading" && <progress max={1} value={u.progress} aria-label={`Uploading ${u.name}`} data-testid="upload-progress" />}
              <span class={`badge ${u.status}`} data-testid="upload-status">{u.status}</span>
              {u.error && <span class="error">{u.error}</span>}
            </li>
          ))}
        </ul>
      )}
      <h3>Files in this store</h3>
      {!entries && <p class="muted" aria-busy="true">Loading files…</p>}
      {entries && entries.length === 0 && <p class="muted">No files yet.</p>}
      {entries && entries.length > 0 && (
        <table class="table" data-testid="store-files">
          <thead><tr><th scope="col">File</th><th scope="col">Size</th><th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
          <tbody>
            {entries.map((entry) => {
              const file = names.get(entry.id);
              return (
                <tr key={entry.id}>
                  <td><Link href={`/files/${entry.id}`}>{file?.filename ?? entry.id}</Link></td>
                  <td>{file ? size(file.bytes) : "…"}</td>
                  <td><span class={`badge ${STATUS_LABEL[entry.status] ?? entry.status}`}>{STATUS_LABEL[entry.status] ?? entry.status}</span>
                    {entry.last_error && <span class="error"> {entry.last_error.message}</span>}</td>
                  <td><button type="button" class="button small" onClick={() => remove(entry.id)} aria-label={`Remove ${file?.filename ?? entry.id} from the store`}>Remove</button></td>
                </tr>
              );
            })}
          </tbody>
        </table>
      )}
      <h3>Try a search</h3>
      <form class="row" onSubmit={search} role="search">
        <label for="store-search" class="visually-hidden">Search this store</label>
        <input id="store-search" type="search" value={query} placeholder="What do the files say about…" data-testid="store-search"
          onInput={(e) => setQuery((e.target as HTMLInputElement).value)} />
        <button type="submit" class="button" disabled={searching}>{searching ? "Searching…" : "Search"}</button>
      </form>
      {results && results.length === 0 && <p class="muted">Nothing found.</p>}
      {results && results.length > 0 && (
        <ol class="search-results" data-testid="search-results">
          {results.map((result, index) => (
            <li key={index}>
              <Link href={`/files/${result.file_id}`}>{result.filename}</Link> <span class="muted">score {result.score.toFixed(3)}</span>
              <blockquote>{result.content.map((c) => c.text).join(" ")}</blockquote>
            </li>
          ))}
        </ol>
      )}
    </div>
  );
}

export function Files() {
  const { api, notify } = useConsole();
  const [location, navigate] = useLocation();
  const search = useSearch();
  const selectedId = new URLSearchParams(search).get("store");
  const [stores, setStores] = useState<VectorStore[] | null>(null);
  const [files, setFiles] = useState<FileObject[] | null>(null);
  const [name, setName] = useState("");
  const [creating, setCreating] = useState(false);
  const [version, setVersion] = useState(0);
  const [error, setError] = useState<string | null>(null);

  useEffect(() => {
    Promise.all([api.get<Page<VectorStore>>("/vector_stores?limit=100"), api.get<Page<FileObject>>("/files?limit=100")])
      .then(([s, f]) => {
        setStores(s.data);
        setFiles(f.data);
      })
      .catch((failure) => setError(describe(failure)));
  }, [api, version]);

  const create = async (event: Event) => {
    event.preventDefault();
    setCreating(true);
    try {
      const store = await api.post<VectorStore>("/vector_stores", { name: name.trim() || "Untitled store" });
      setName("");
      setVersion((v) => v + 1);
      navigate(`${location}?store=${store.id}`);
    } catch (failure) {
      notify("error", `Not created: ${describe(failure)}`);
    } finally {
      setCreating(false);
    }
  };
  const removeFile = async (id: string) => {
    try {
      await api.delete(`/files/${id}`);
      setVersion((v) => v + 1);
    } catch (failure) {
      notify("error", `Not deleted: ${describe(failure)}`);
    }
  };

  const selected = stores?.find((s) => s.id === selectedId) ?? null;
  return (
    <div class="split">
      <aside class="sidebar" aria-label="Vector stores">
        <form class="stack" onSubmit={create}>
          <label for="store-name">New vector store</label>
          <input id="store-name" value={name} placeholder="Name" data-testid="store-name" onInput={(e) => setName((e.target as HTMLInputElement).value)} />
          <button type="submit" class="button primary" disabled={creating} data-testid="create-store">{creating ? "Creating…" : "Create"}</button>
        </form>
        {!stores && !error && <p class="muted" aria-busy="true">Loading stores…</p>}
        {error && <p class="error" role="alert">{error}</p>}
        <ul class="list">
          <li class={!selectedId ? "active" : ""}><Link href="/files" aria-current={!selectedId ? "page" : undefined}>All files</Link></li>
          {stores?.map((store) => (
            <li key={store.id} class={store.id === selectedId ? "active" : ""}>
              <Link href={`/files?store=${store.id}`} aria-current={store.id === selectedId ? "page" : undefined} data-testid="store-item">
                <span class="item-title">{store.name || store.id}</span>
                <span class="item-meta">{store.file_counts.completed}/{store.file_counts.total} processed</span>
              </Link>
            </li>
          ))}
        </ul>
      </aside>
      <section class="content" aria-label="Files">
        {selected && <StoreView key={selected.id} store={selected} files={new Map((files ?? []).map((f) => [f.id, f]))} onChanged={() => {}} />}
        {selectedId && stores && !selected && <p class="error" role="alert">This vector store does not exist (or was deleted).</p>}
        {!selectedId && (
          <>
            <h2>All files</h2>
            {!files && !error && <p class="muted" aria-busy="true">Loading files…</p>}
            {files && files.length === 0 && <p class="muted">No files yet. Create a vector store and drop files into it, or attach files in a chat.</p>}
            {files && files.length > 0 && (
              <table class="table" data-testid="all-files">
                <thead><tr><th scope="col">File</th><th scope="col">Size</th><th scope="col">Purpose</th><th scope="col">Status</th><th scope="col"><span class="visually-hidden">Actions</span></th></tr></thead>
                <tbody>
                  {files.map((file) => (
                    <tr key={file.id}>
                      <td><Link href={`/files/${file.id}`}>{file.filename}</Link></td>
                      <td>{size(file.bytes)}</td>
                      <td>{file.purpose}</td>
                      <td><span class={`badge ${file.status}`}>{file.status}</span></td>
                      <td><button type="button" class="button small" onClick={() => removeFile(file.id)} aria-label={`Delete ${file.filename}`}>Delete</button></td>
                    </tr>
                  ))}
                </tbody>
              </table>
            )}
          </>
        )}
      </section>
    </div>
  );
}

const TEXT_FILE = /\.(txt|md|markdown|csv|json|html?|xml|ya?ml|log|py|js|ts)$/i;
// Shown as images: a code interpreter's chart, an uploaded photo. (Not SVG: an image the model's
// code wrote is user content, and SVG is a document that can carry script.)
const IMAGE_FILE = /\.(png|jpe?g|gif|webp)$/i;

export function FileDetail(props: { fileId: string }) {
  const { api, notify } = useConsole();
  const page = new URLSearchParams(useSearch()).get("page");
  const [file, setFile] = useState<FileObject | null>(null);
  const [error, setError] = useState<string | null>(null);
  const [preview, setPreview] = useState<string | null>(null);

  useEffect(() => {
    setFile(null);
    setPreview(null);
    api.get<FileObject>(`/files/${props.fileId}`).then((found) => {
      setFile(found);
      if (TEXT_FILE.test(found.filename) && found.bytes <= 512 * 1024) {
        api.download(`/files/${props.fileId}/content`).then(({ blob }) => blob.text()).then(setPreview).catch(() => {});
      }
    }).catch((failure) => setError(describe(failure)));
  }, [api, props.fileId]);

  const download = async () => {
    try {
      const { blob } = await api.download(`/files/${props.fileId}/content`);
      saveBlob(blob, file?.filename ?? props.fileId);
    } catch (failure) {
      notify("error", `Download failed: ${describe(failure)}`);
    }
  };

  return (
    <section class="content file-detail" aria-label="File" data-testid="file-detail">
      <p><Link href="/files">← All files</Link></p>
      {!file && !error && <p class="muted" aria-busy="true">Loading the file…</p>}
      {error && <p class="error" role="alert">{error}</p>}
      {file && (
        <>
          <h1 data-testid="file-name">{file.filename}</h1>
          {page && <p class="cited-page" data-testid="cited-page">Cited on page {page}</p>}
          <dl class="facts">
            <dt>Id</dt><dd>{file.id}</dd>
            <dt>Size</dt><dd>{size(file.bytes)}</dd>
            <dt>Purpose</dt><dd>{file.purpose}</dd>
            <dt>Status</dt><dd><span class={`badge ${file.status}`}>{file.status}</span>{file.status_details ? ` ${file.status_details}` : ""}</dd>
            <dt>Uploaded</dt><dd>{new Date(file.created_at * 1000).toLocaleString()}</dd>
          </dl>
          <button type="button" class="button" onClick={download}>Download</button>
          {preview !== null && (
            <>
              <h2>Content</h2>
              <pre class="preview" data-testid="file-preview">{preview.slice(0, 20000)}</pre>
            </>
          )}
          {IMAGE_FILE.test(file.filename) && (
            <>
              <h2>Content</h2>
              <div data-testid="file-image"><FileImage fileId={file.id} alt={file.filename} /></div>
            </>
          )}
        </>
      )}
    </section>
  );
}
