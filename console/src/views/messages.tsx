// One message (user text, or an assistant's Markdown with its citations, images and feedback)
// and a run's tool steps as collapsible entries.
import { useEffect, useState } from "preact/hooks";
import { ThumbDownIcon, ThumbUpIcon } from "../icons";
import { Link, useLocation } from "wouter-preact";
import { describe } from "../api";
import { useConsole } from "../app";
import { citationHref, renderMarkdown } from "../markdown";
import type { Annotation, Feedback, Message, Step, ToolCall } from "../types";

const imageUrls = new Map<string, Promise<string>>();

/** A file the API serves (an uploaded image, a code interpreter's chart), fetched with the
 * credential and shown from a blob: URL. */
export function FileImage(props: { fileId: string; alt: string }) {
  const { api } = useConsole();
  const [url, setUrl] = useState<string | null>(null);
  const [failed, setFailed] = useState(false);
  useEffect(() => {
    let current = imageUrls.get(props.fileId);
    if (!current) {
      current = api.download(`/files/${props.fileId}/content`).then(({ blob }) => URL.createObjectURL(blob));
      imageUrls.set(props.fileId, current);
      current.catch(() => imageUrls.delete(props.fileId));
    }
    let live = true;
    current.then((value) => live && setUrl(value), () => live && setFailed(true));
    return () => {
      live = false;
    };
  }, [props.fileId]);
  if (failed) return <span class="muted">[image {props.fileId} could not be loaded]</span>;
  if (!url) return <span class="muted" aria-busy="true">Loading image…</span>;
  return <img class="message-image" src={url} alt={props.alt} />;
}

function Markdown(props: { text: string; annotations: Annotation[] }) {
  const [, navigate] = useLocation();
  const onClick = (event: MouseEvent) => {
    const link = (event.target as HTMLElement).closest("a[data-internal]") as HTMLAnchorElement | null;
    if (link) {
      event.preventDefault();
      navigate(link.getAttribute("href")!);
    }
  };
  // The one place model output becomes HTML: renderMarkdown disables raw HTML and sanitises.
  return <div class="markdown" onClick={onClick} dangerouslySetInnerHTML={{ __html: renderMarkdown(props.text, props.annotations) }} />;
}

function Citations(props: { annotations: Annotation[] }) {
  const cited = props.annotations
    .map((annotation, index) => ({ annotation, number: index + 1, href: citationHref(annotation) }))
    .filter((entry) => entry.annotation.type === "file_citation" && entry.href);
  if (!cited.length) return null;
  return (
    <div class="citations">
      <span class="citations-title">Sources</span>
      <ol>
        {cited.map(({ annotation, number, href }) => (
          <li key={number} value={number}>
            <Link href={href!} data-testid="citation-link">
              {annotation.file_citation?.file_name || annotation.file_citation?.file_id}
              {annotation.file_citation?.page ? `, page ${annotation.file_citation.page}` : ""}
            </Link>
          </li>
        ))}
      </ol>
    </div>
  );
}

function FeedbackControls(props: { threadId: string; message: Message }) {
  const { api, notify } = useConsole();
  const [feedback, setFeedback] = useState<Feedback | null>(props.message.feedback ?? null);
  const [commenting, setCommenting] = useState(false);
  const [comment, setComment] = useState(props.message.feedback?.comment ?? "");
  const [saving, setSaving] = useState(false);

  const save = async (rating: Feedback["rating"], text: string) => {
    setSaving(true);
    try {
      const saved = await api.post<Feedback>(`/parley/threads/${props.threadId}/messages/${props.message.id}/feedback`,
        { rating, comment: text });
      setFeedback(saved);
      setCommenting(false);
      notify("info", "Thanks, your feedback is saved.");
    } catch (error) {
      notify("error", `Feedback not saved: ${describe(error)}`);
    } finally {
      setSaving(false);
    }
  };

  const rating = feedback?.rating ?? null;
  return (
    <div class="feedback" data-testid="feedback">
      <button type="button" class="icon-button small" aria-label="Good answer" aria-pressed={rating === "thumbs_up"}
        disabled={saving} onClick={() => save("thumbs_up", comment)}><ThumbUpIcon /></button>
      <button type="button" class="icon-button small" aria-label="Bad answer" aria-pressed={rating === "thumbs_down"}
        disabled={saving} onClick={() => save("thumbs_down", comment)}><ThumbDownIcon /></button>
      <button type="button" class="link-button" aria-expanded={commenting} onClick={() => setCommenting(!commenting)}>
        {feedback?.comment ? "Edit comment" : "Comment"}
      </button>
      {commenting && (
        <form class="feedback-form" onSubmit={(e) => {
          e.preventDefault();
          save(rating, comment);
        }}>
          <label for={`comment-${props.message.id}`}>Comment on this answer</label>
          <textarea id={`comment-${props.message.id}`} rows={2} value={comment}
            onInput={(e) => setComment((e.target as HTMLTextAreaElement).value)} />
          <button type="submit" class="button small" disabled={saving || (!comment && !rating)}>Save comment</button>
        </form>
      )}
    </div>
  );
}

export function MessageView(props: { threadId: string | null; message: Message; streaming?: boolean; pending?: boolean }) {
  const { message } = props;
  const assistant = message.role === "assistant";
  const annotations = message.content.flatMap((part) => (part.type === "text" ? part.text.annotations : []));
  return (
    <article class={`message ${message.role}${props.streaming ? " streaming" : ""}`}
      data-testid={assistant ? "assistant-message" : "user-message"} data-message-id={message.id}
      data-streaming={props.streaming ? "true" : "false"} aria-busy={props.streaming ? true : undefined}>
      <header class="message-author">{assistant ? "Assistant" : "You"}{props.pending ? " · sending…" : ""}</header>
      <div class="message-body">
        {message.content.map((part, index) => {
          if (part.type === "text") {
            return assistant
              ? <Markdown key={index} text={part.text.value} annotations={part.text.annotations} />
              : <p key={index} class="user-text">{part.text.value}</p>;
          }
          if (part.type === "image_file") return <FileImage key={index} fileId={part.image_file.file_id} alt="Attached image" />;
          return <a key={index} href={part.image_url.url} target="_blank" rel="noopener noreferrer">Image: {part.image_url.url}</a>;
        })}
        {(message.attachments?.length ?? 0) > 0 && (
          <ul class="attachment-list" aria-label="Attachments">
            {message.attachments!.map((a) => <li key={a.file_id}><Link href={`/files/${a.file_id}`}>Attachment {a.file_id}</Link></li>)}
          </ul>
        )}
      </div>
      {assistant && <Citations annotations={annotations} />}
      {assistant && !props.streaming && props.threadId && <FeedbackControls threadId={props.threadId} message={message} />}
    </article>
  );
}

function pretty(json: string): string {
  try {
    return JSON.stringify(JSON.parse(json), null, 2);
  } catch {
    return json;
  }
}

function ToolCallView(props: { call: ToolCall; status: string }) {
  const { call } = props;
  let title = "Tool call";
  if (call.type === "function") title = `Function ${call.function?.name ?? ""}`;
  else if (call.type === "file_search") title = "File search";
  else if (call.type === "code_interpreter") title = "Code interpreter";
  return (
    <details class="tool-call" data-testid="tool-step" data-tool-type={call.type}>
      <summary>
        <span class="tool-title">{title}</span>
        <span class={`badge ${props.status}`}>{props.status.replace("_", " ")}</span>
      </summary>
      <div class="tool-body">
        {call.type === "function" && (
          <>
            <h4>Arguments</h4>
            <pre>{pretty(call.function?.arguments ?? "")}</pre>
            <h4>Output</h4>
            {call.function?.output != null ? <pre>{call.function.output}</pre> : <p class="muted">Waiting for the output…</p>}
          </>
        )}
        {call.type === "file_search" && (
          <>
            <h4>Results</h4>
            {(call.file_search?.results ?? []).length === 0 ? <p class="muted">No results yet.</p> : (
              <ol class="search-results">
                {call.file_search!.results!.map((result, index) => (
                  <li key={index}>
                    <Link href={`/files/${result.file_id}`}>{result.file_name || result.file_id}</Link>
                    <span class="muted"> · score {result.score.toFixed(2)}</span>
                    {result.content?.[0]?.text && <blockquote>{result.content[0].text}</blockquote>}
                  </li>
                ))}
              </ol>
            )}
          </>
        )}
        {call.type === "code_interpreter" && (
          <>
            <h4>Code</h4>
            <pre>{call.code_interpreter?.input ?? ""}</pre>
            <h4>Output</h4>
            {(call.code_interpreter?.outputs ?? []).length === 0 && <p class="muted">No output yet.</p>}
            {(call.code_interpreter?.outputs ?? []).map((output, index) =>
              output.type === "logs"
                ? <pre key={index}>{output.logs}</pre>
                : <FileImage key={index} fileId={output.image.file_id} alt="Code interpreter output" />)}
          </>
        )}
      </div>
    </details>
  );
}

export function StepsView(props: { steps: Step[] }) {
  const calls = props.steps.filter((step) => step.type === "tool_calls")
    .flatMap((step) => (step.step_details.tool_calls ?? []).map((call, index) => ({ call, status: step.status, key: `${step.id}:${index}` })));
  if (!calls.length) return null;
  return (
    <section class="steps" aria-label="Tool steps">
      {calls.map(({ call, status, key }) => <ToolCallView key={key} call={call} status={status} />)}
    </section>
  );
}
