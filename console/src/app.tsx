// The console's frame: sign-in, the top bar (sections, theme, help, sign out), the routes, the
// keyboard shortcuts and the notices.
import { createContext } from "preact";
import { MoonIcon, SunIcon } from "./icons";
import { useCallback, useContext, useEffect, useMemo, useRef, useState } from "preact/hooks";
import { Link, Redirect, Route, Switch, useLocation } from "wouter-preact";
import { Api, ApiError } from "./api";
import { applyTheme, effectiveTheme, onSystemThemeChange, storeCredential, storedCredential, storedTheme, type Theme } from "./session";
import { Assistants } from "./views/assistants";
import { Chat } from "./views/chat";
import { FileDetail, Files } from "./views/files";
import { Help } from "./views/help";
import { SignIn } from "./views/signin";
import { UsageView } from "./views/usage";

export interface ChatActions {
  // Each returns true if it did something.
  stop?: () => boolean;
  move?: (by: number) => boolean;
}

export interface Notice {
  id: number;
  kind: "error" | "info";
  text: string;
}

interface Console {
  api: Api;
  notify: (kind: Notice["kind"], text: string) => void;
  chatActions: { current: ChatActions };
}

const ConsoleContext = createContext<Console | null>(null);

export function useConsole(): Console {
  const value = useContext(ConsoleContext);
  if (!value) throw new Error("useConsole outside the signed-in console");
  return value;
}

export const COMPOSER_ID = "composer-input";

export function focusComposer(): void {
  // After a navigation the new chat's box replaces the old one a moment later: focus whichever
  // is there until the focus stays on a box that is still in the page.
  let tries = 0;
  let focused: HTMLElement | null = null;
  const attempt = () => {
    if (focused && focused.isConnected && document.activeElement === focused) return;
    const input = document.getElementById(COMPOSER_ID) as HTMLTextAreaElement | null;
    if (input && !input.disabled) {
      input.focus();
      focused = input;
    }
    if (tries++ < 40) setTimeout(attempt, 30);
  };
  attempt();
}

function isTyping(target: EventTarget | null): boolean {
  const element = target as HTMLElement | null;
  if (!element) return false;
  const tag = element.tagName;
  return tag === "INPUT" || tag === "TEXTAREA" || tag === "SELECT" || element.isContentEditable;
}

let noticeCounter = 0;

export function App() {
  const [credential, setCredential] = useState<string | null>(storedCredential());
  const [expired, setExpired] = useState<string | null>(null);
  const [theme, setTheme] = useState<Theme | null>(storedTheme());
  const [help, setHelp] = useState(false);
  const [notices, setNotices] = useState<Notice[]>([]);
  const [location, navigate] = useLocation();
  const chatActions = useRef<ChatActions>({});
  const helpReturn = useRef<HTMLElement | null>(null);

  useEffect(() => applyTheme(theme), [theme]);
  useEffect(() => onSystemThemeChange(() => applyTheme(storedTheme())), []);

  const notify = useCallback((kind: Notice["kind"], text: string) => {
    const id = ++noticeCounter;
    setNotices((current) => [...current.slice(-3), { id, kind, text }]);
    setTimeout(() => setNotices((current) => current.filter((n) => n.id !== id)), kind === "error" ? 8000 : 4000);
  }, []);

  const signOut = useCallback((reason: string | null = null) => {
    storeCredential(null);
    setCredential(null);
    setExpired(reason);
  }, []);

  const api = useMemo(
    () =>
      credential
        ? new Api(credential, (error: ApiError) => signOut(`Your credential was refused: ${error.message}`))
        : null,
    [credential, signOut],
  );

  const openHelp = useCallback(() => {
    helpReturn.current = document.activeElement as HTMLElement | null;
    setHelp(true);
  }, []);
  const closeHelp = useCallback(() => {
    setHelp(false);
    helpReturn.current?.focus?.();
  }, []);

  useEffect(() => {
    if (!credential) return;
    const onKey = (event: KeyboardEvent) => {
      if (event.defaultPrevented) return;
      const plainAlt = event.altKey && !event.ctrlKey && !event.metaKey;
      if (plainAlt && event.code === "KeyN") {
        event.preventDefault();
        navigate("/chat");
        focusComposer();
        return;
      }
      if (plainAlt && (event.key === "ArrowDown" || event.key === "ArrowUp")) {
        if (chatActions.current.move?.(event.key === "ArrowDown" ? 1 : -1)) event.preventDefault();
        return;
      }
      if (event.key === "Escape") {
        if (help) {
          event.preventDefault();
          closeHelp();
        } else if (chatActions.current.stop?.()) {
          event.preventDefault();
        }
        return;
      }
      if (isTyping(event.target) || event.ctrlKey || event.metaKey || event.altKey) return;
      if (event.key === "/") {
        event.preventDefault();
        if (!location.startsWith("/chat")) navigate("/chat");
        focusComposer();
      } else if (event.key === "?") {
        event.preventDefault();
        openHelp();
      }
    };
    window.addEventListener("keydown", onKey);
    return () => window.removeEventListener("keydown", onKey);
  }, [credential, help, location, navigate, openHelp, closeHelp]);

  const currentTheme = effectiveTheme(theme);
  const nextTheme: Theme = currentTheme === "dark" ? "light" : "dark";
  const themeButton = (
    <button type="button" class="icon-button" data-testid="theme-toggle" aria-label={`Switch to ${nextTheme} theme`}
      title={`Switch to ${nextTheme} theme`} onClick={() => {
        applyTheme(nextTheme); // at once, not after the next render
        setTheme(nextTheme);
      }}>
      {currentTheme === "dark" ? <SunIcon /> : <MoonIcon />}
    </button>
  );

  if (!credential || !api) {
    return (
      <div class="signin-page">
        <div class="signin-theme">{themeButton}</div>
        <SignIn reason={expired} onSignedIn={(value) => {
          storeCredential(value);
          setExpired(null);
          setCredential(value);
        }} />
      </div>
    );
  }

  const section = (href: string, label: string) => (
    <Link href={href} class={location === href || location.startsWith(href + "/") ? "nav-link active" : "nav-link"}
      aria-current={location === href || location.startsWith(href + "/") ? "page" : undefined}>{label}</Link>
  );

  return (
    <ConsoleContext.Provider value={{ api, notify, chatActions }}>
      <div class="app">
        <a class="skip-link" href="#main">Skip to content</a>
        <header class="topbar">
          <span class="brand" aria-hidden="true">Parley</span>
          <nav aria-label="Sections" class="sections">
            {section("/chat", "Chat")}
            {section("/assistants", "Assistants")}
            {section("/files", "Files")}
            {section("/usage", "Usage")}
          </nav>
          <div class="topbar-actions">
            {themeButton}
            <button type="button" class="icon-button" aria-label="Keyboard shortcuts" title="Keyboard shortcuts (?)"
              data-testid="help-button" onClick={openHelp}>?</button>
            <button type="button" class="button subtle" data-testid="sign-out" onClick={() => signOut(null)}>Sign out</button>
          </div>
        </header>
        <main id="main" class="main" tabIndex={-1}>
          <Switch>
            <Route path="/chat/:threadId?">{(params) => <Chat threadId={params.threadId ?? null} />}</Route>
            <Route path="/assistants/:assistantId?">{(params) => <Assistants assistantId={params.assistantId ?? null} />}</Route>
            <Route path="/files/:fileId">{(params) => <FileDetail fileId={params.fileId} />}</Route>
            <Route path="/files"><Files /></Route>
            <Route path="/usage"><UsageView /></Route>
            <Route><Redirect to="/chat" replace /></Route>
          </Switch>
        </main>
        <div class="notices" role="status" aria-live="polite">
          {notices.map((notice) => (
            <div key={notice.id} class={`notice ${notice.kind}`} data-testid={`notice-${notice.kind}`}>{notice.text}</div>
          ))}
        </div>
        {help && <Help onClose={closeHelp} />}
      </div>
    </ConsoleContext.Provider>
  );
}
