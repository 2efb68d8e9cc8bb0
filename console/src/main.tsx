// The console's shell: sign-in, hash routes (the gateway serves one page), navigation.
import { render } from "preact";
import { useCallback, useEffect, useRef, useState } from "preact/hooks";
import "uplot/dist/uPlot.min.css";
import "./style.css";
import { getJSON, storeKey, storedKey, Unauthorized } from "./api";
import { JobPage } from "./job";
import { JobsPage } from "./jobs";
import { Playground } from "./playground";

type Auth = "checking" | "login" | "ok";

/** Every page gets this: call it with an error, and a 401 sends the user to the login. */
export type OnError = (error: unknown) => void;

function useHashRoute(): string {
  const [hash, setHash] = useState(location.hash || "#/");
  useEffect(() => {
    const changed = () => setHash(location.hash || "#/");
    addEventListener("hashchange", changed);
    return () => removeEventListener("hashchange", changed);
  }, []);
  return hash;
}

async function keyWorks(): Promise<boolean> {
  try {
    await getJSON("/v1/fine_tuning/jobs?limit=1");
    return true;
  } catch (error) {
    if (error instanceof Unauthorized) return false;
    throw error;
  }
}

function Login({ refused, onKey }: { refused: boolean; onKey: (key: string) => void }) {
  const [key, setKey] = useState("");
  const input = useRef<HTMLInputElement>(null);
  useEffect(() => input.current?.focus(), []);
  return (
    <main class="login">
      <h1>maap console</h1>
      <form
        aria-label="Sign in"
        onSubmit={(e) => {
          e.preventDefault();
          if (key.trim()) onKey(key.trim());
        }}
      >
        <label for="api-key">API key</label>
        <input
          id="api-key"
          ref={input}
          type="password"
          autocomplete="off"
          required
          aria-describedby="api-key-help"
          aria-invalid={refused}
          value={key}
          onInput={(e) => setKey((e.target as HTMLInputElement).value)}
        />
        <p id="api-key-help" class="help">
          The key you give the OpenAI client for this gateway. It is kept for this tab only.
        </p>
        {refused && (
          <p role="alert" class="error">
            That API key was refused by the gateway.
          </p>
        )}
        <button type="submit">Sign in</button>
      </form>
    </main>
  );
}

function App() {
  const [auth, setAuth] = useState<Auth>("checking");
  const [refused, setRefused] = useState(false);
  const [problem, setProblem] = useState<string | null>(null);
  const hash = useHashRoute();

  const check = useCallback(async () => {
    try {
      const ok = await keyWorks();
      if (!ok) {
        setRefused(storedKey() !== null);
        storeKey(null);
      }
      setAuth(ok ? "ok" : "login");
      setProblem(null);
    } catch (error) {
      setProblem(`The gateway did not answer: ${String(error)}`);
    }
  }, []);
  useEffect(() => void check(), [check]);

  const onError = useCallback<OnError>((error) => {
    if (error instanceof Unauthorized) {
      storeKey(null);
      setRefused(true);
      setAuth("login");
    } else if (!(error instanceof DOMException && error.name === "AbortError")) {
      setProblem(error instanceof Error ? error.message : String(error));
    }
  }, []);

  if (problem && auth === "checking") return <p role="alert">{problem}</p>;
  if (auth === "checking") return <p>Checking the gateway…</p>;
  if (auth === "login") {
    return (
      <Login
        refused={refused}
        onKey={(key) => {
          storeKey(key);
          setAuth("checking");
          void check();
        }}
      />
    );
  }

  const jobMatch = /^#\/jobs\/([^/]+)$/.exec(hash);
  const page = jobMatch ? "job" : hash === "#/playground" ? "playground" : "jobs";
  return (
    <>
      <header>
        <nav aria-label="Main">
          <a href="#/" class="brand">
            maap
          </a>
          <a href="#/" aria-current={page === "jobs" ? "page" : undefined}>
            Jobs
          </a>
          <a href="#/playground" aria-current={page === "playground" ? "page" : undefined}>
            Playground
          </a>
          {storedKey() && (
            <button
              type="button"
              class="link"
              onClick={() => {
                storeKey(null);
                setRefused(false);
                setAuth("login");
              }}
            >
              Sign out
            </button>
          )}
        </nav>
      </header>
      {problem && (
        <p role="alert" class="error">
          {problem}
        </p>
      )}
      <main>
        {page === "job" && <JobPage jobId={decodeURIComponent(jobMatch![1])} onError={onError} />}
        {page === "playground" && <Playground onError={onError} />}
        {page === "jobs" && <JobsPage onError={onError} />}
      </main>
    </>
  );
}

render(<App />, document.getElementById("app")!);
