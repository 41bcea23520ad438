import { useEffect, useRef } from "preact/hooks";

export const SHORTCUTS: [string, string][] = [
  ["Alt + N", "New chat"],
  ["/", "Focus the message box"],
  ["Enter", "Send (Shift + Enter: new line)"],
  ["Esc", "Stop the answer being written (or close this help)"],
  ["Alt + ↓", "Next chat"],
  ["Alt + ↑", "Previous chat"],
  ["?", "Show these shortcuts"],
];

export function Help(props: { onClose: () => void }) {
  const close = useRef<HTMLButtonElement>(null);
  useEffect(() => close.current?.focus(), []);
  return (
    <div class="overlay" onClick={(e) => e.target === e.currentTarget && props.onClose()}>
      <div class="dialog" role="dialog" aria-modal="true" aria-labelledby="help-title" data-testid="help-overlay">
        <h2 id="help-title">Keyboard shortcuts</h2>
        <table class="shortcuts">
          <tbody>
            {SHORTCUTS.map(([keys, what]) => (
              <tr key={keys}>
                <th scope="row"><kbd>{keys}</kbd></th>
                <td>{what}</td>
              </tr>
            ))}
          </tbody>
        </table>
        <button ref={close} type="button" class="button" onClick={props.onClose}>Close</button>
      </div>
    </div>
  );
}
