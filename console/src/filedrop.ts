// Files dropped on an area (the conversation, a vector store): whether a drag is over it, and
// the handlers that accept only drags carrying files.
import { useState } from "preact/hooks";
import type { JSX } from "preact";

type DropHandlers = Pick<JSX.HTMLAttributes<HTMLElement>, "onDragOver" | "onDragLeave" | "onDrop">;

export function useFileDrop(onFiles: (files: File[]) => void): [boolean, DropHandlers] {
  const [dragging, setDragging] = useState(false);
  const handlers: DropHandlers = {
    onDragOver: (e) => {
      if (e.dataTransfer?.types.includes("Files")) {
        e.preventDefault();
        setDragging(true);
      }
    },
    onDragLeave: (e) => e.currentTarget === e.target && setDragging(false),
    onDrop: (e) => {
      e.preventDefault();
      setDragging(false);
      const files = Array.from(e.dataTransfer?.files ?? []);
      if (files.length) onFiles(files);
    },
  };
  return [dragging, handlers];
}
