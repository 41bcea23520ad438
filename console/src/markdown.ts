// Model output as Markdown, safely: markdown-it with raw HTML off (an HTML tag in the text is
// shown as text), then DOMPurify over the result. This is the only place the console turns
// text into HTML; everything else is rendered as text by Preact.
import DOMPurify from "dompurify";
import MarkdownIt from "markdown-it";
import type { Annotation } from "./types";

const markdown = new MarkdownIt({ html: false, linkify: true, breaks: true });

DOMPurify.addHook("afterSanitizeAttributes", (node) => {
  if (node.tagName === "A") {
    const href = node.getAttribute("href") ?? "";
    if (href.startsWith("/")) {
      node.setAttribute("data-internal", "true"); // routed inside the console (a citation)
    } else {
      node.setAttribute("target", "_blank");
      node.setAttribute("rel", "noopener noreferrer");
    }
  }
});

const FILE_ID = /^file-[0-9a-f]{32}$/;

/** A link to the file (and page) a citation names, or null if the id is not a file id. */
export function citationHref(annotation: Annotation): string | null {
  const id = annotation.file_citation?.file_id ?? annotation.file_path?.file_id ?? "";
  if (!FILE_ID.test(id)) return null;
  const page = annotation.file_citation?.page;
  return page ? `/files/${id}?page=${page}` : `/files/${id}`;
}

/** The text with each annotation's marker (e.g. "【4:0†source】") replaced by a numbered link to
 * its file. Indices are in code points, as the API gives them. */
export function withCitationLinks(text: string, annotations: Annotation[]): string {
  const points = Array.from(text);
  const ordered = annotations
    .map((annotation, position) => ({ annotation, number: position + 1 }))
    .filter(({ annotation }) => annotation.end_index > annotation.start_index && annotation.end_index <= points.length)
    .sort((a, b) => b.annotation.start_index - a.annotation.start_index);
  for (const { annotation, number } of ordered) {
    const href = citationHref(annotation);
    const label = annotation.type === "file_path" ? "file" : String(number);
    const link = href ? `[\\[${label}\\]](${href})` : `\\[${label}\\]`;
    points.splice(annotation.start_index, annotation.end_index - annotation.start_index, link);
  }
  return points.join("");
}

export function renderMarkdown(text: string, annotations: Annotation[] = []): string {
  const html = markdown.render(withCitationLinks(text, annotations));
  return DOMPurify.sanitize(html, { USE_PROFILES: { html: true }, FORBID_TAGS: ["style", "form", "input"] });
}
