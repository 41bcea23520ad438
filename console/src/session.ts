// The signed-in credential (an API key or a JWT): kept in this tab's sessionStorage so that a
// reload keeps the person signed in, never in localStorage, a cookie or a URL. Signing out
// removes it. The theme choice (not a secret) is kept in localStorage.

const CREDENTIAL = "parley.credential";
const THEME = "parley.theme";

export function storedCredential(): string | null {
  try {
    return sessionStorage.getItem(CREDENTIAL);
  } catch {
    return null;
  }
}

export function storeCredential(credential: string | null): void {
  try {
    if (credential) sessionStorage.setItem(CREDENTIAL, credential);
    else sessionStorage.removeItem(CREDENTIAL);
  } catch {
    // storage unavailable: the credential lives in memory only
  }
}

export type Theme = "light" | "dark";

const systemDark = () => window.matchMedia("(prefers-color-scheme: dark)");

/** The explicit choice, or null to follow the system setting. */
export function storedTheme(): Theme | null {
  const value = localStorage.getItem(THEME);
  return value === "light" || value === "dark" ? value : null;
}

export function effectiveTheme(choice: Theme | null): Theme {
  return choice ?? (systemDark().matches ? "dark" : "light");
}

export function applyTheme(choice: Theme | null): void {
  if (choice) localStorage.setItem(THEME, choice);
  else localStorage.removeItem(THEME);
  document.documentElement.dataset.theme = effectiveTheme(choice);
}

export function onSystemThemeChange(listener: () => void): () => void {
  const query = systemDark();
  query.addEventListener("change", listener);
  return () => query.removeEventListener("change", listener);
}
