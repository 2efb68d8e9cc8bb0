// The gateway's JSON API with the signed-in key. A 401 anywhere means the key is no
// good (revoked, mistyped, another gateway's): the app drops it and shows the login.

const KEY_STORAGE = "maap.apiKey";

export class Unauthorized extends Error {}

export class ApiError extends Error {
  constructor(
    readonly status: number,
    message: string,
    readonly param: string | null = null,
  ) {
    super(message);
  }
}

export function storedKey(): string | null {
  return sessionStorage.getItem(KEY_STORAGE);
}

export function storeKey(key: string | null): void {
  if (key === null) sessionStorage.removeItem(KEY_STORAGE);
  else sessionStorage.setItem(KEY_STORAGE, key);
}

function headers(extra: Record<string, string> = {}): Record<string, string> {
  const key = storedKey();
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function failure(response: Response): Promise<never> {
  if (response.status === 401) throw new Unauthorized("the API key was refused");
  let message = `${response.status} ${response.statusText}`;
  let param: string | null = null;
  try {
    const body = await response.json();
    message = body?.error?.message ?? message;
    param = body?.error?.param ?? null;
  } catch {
    // Not JSON (a proxy's page): the status line is all there is.
  }
  throw new ApiError(response.status, message, param);
}

export async function getJSON<T>(path: string, signal?: AbortSignal): Promise<T> {
  const response = await fetch(path, { headers: headers(), signal });
  if (!response.ok) await failure(response);
  return (await response.json()) as T;
}

/** POST a JSON body and hand each server-sent event's parsed data to `onEvent`. */
export async function postStream(
  path: string,
  body: unknown,
  onEvent: (data: unknown) => void,
  signal: AbortSignal,
): Promise<void> {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json", Accept: "text/event-stream" }),
    body: JSON.stringify(body),
    signal,
  });
  if (!response.ok || !response.body) await failure(response);
  const reader = response.body!.pipeThrough(new TextDecoderStream()).getReader();
  let buffered = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) break;
    buffered += value;
    // Events end with a blank line; the last piece may be an event still arriving.
    const events = buffered.split(/\r?\n\r?\n/);
    buffered = events.pop() ?? "";
    for (const event of events) {
      for (const line of event.split(/\r?\n/)) {
        if (!line.startsWith("data:")) continue;
        const data = line.slice(5).trim();
        if (data === "[DONE]") return;
        onEvent(JSON.parse(data));
      }
    }
  }
}
