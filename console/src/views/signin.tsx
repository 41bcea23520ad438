// Sign-in with an API key (from `parley keys create` or `make run`) or a JWT from the
// deployment's identity provider: both are sent as `Authorization: Bearer`. The credential is
// checked with one call before it is kept.
import { useState } from "preact/hooks";
import { Api, ApiError } from "../api";

export function SignIn(props: { reason: string | null; onSignedIn: (credential: string) => void }) {
  const [value, setValue] = useState("");
  const [error, setError] = useState<string | null>(props.reason);
  const [checking, setChecking] = useState(false);

  const submit = async (event: Event) => {
    event.preventDefault();
    const credential = value.trim().replace(/^Bearer\s+/i, "");
    if (!credential) {
      setError("Enter an API key or a JWT.");
      return;
    }
    setChecking(true);
    setError(null);
    try {
      await new Api(credential).get("/parley/threads?limit=1");
      props.onSignedIn(credential);
    } catch (failure) {
      if (failure instanceof ApiError && failure.status === 401) {
        setError(`That key or token was not accepted: ${failure.message} Check that you copied it whole, and that it has not expired or been revoked.`);
      } else if (failure instanceof ApiError && failure.status === 403) {
        // A credential without the sessions scope can still sign in; the sections it may not use say so.
        props.onSignedIn(credential);
      } else {
        setError(failure instanceof Error ? failure.message : String(failure));
      }
    } finally {
      setChecking(false);
    }
  };

  return (
    <main class="signin" aria-labelledby="signin-title">
      <h1 id="signin-title">Parley console</h1>
      <p class="muted">Chat with your assistants and models, manage files and see usage.</p>
      <form onSubmit={submit} class="stack" data-testid="signin-form" aria-busy={checking}>
        <label for="credential">API key or JWT</label>
        <input id="credential" name="credential" type="password" autoComplete="off" spellcheck={false}
          value={value} onInput={(e) => setValue((e.target as HTMLInputElement).value)}
          aria-describedby="credential-help" aria-invalid={error ? true : undefined} autoFocus />
        <p id="credential-help" class="hint">
          An API key (<code>make run</code> prints a development key; <code>parley keys create</code> makes more) or a
          JWT from your identity provider. It is kept in this browser tab only, and cleared when you sign out.
        </p>
        {error && <p class="error" role="alert" data-testid="signin-error">{error}</p>}
        <button type="submit" class="button primary" disabled={checking}>{checking ? "Checking…" : "Sign in"}</button>
      </form>
    </main>
  );
}
