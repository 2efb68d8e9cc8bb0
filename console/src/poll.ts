// Poll an endpoint while a page is shown: the first load at once, then every `ms`.
import { useEffect, useRef } from "preact/hooks";

export function usePoll(
  load: (signal: AbortSignal) => Promise<boolean | void>,
  ms: number,
  deps: unknown[],
): void {
  const latest = useRef(load);
  latest.current = load;
  useEffect(() => {
    const abort = new AbortController();
    let timer: number | undefined;
    const tick = async () => {
      // `false` from the loader: nothing will change any more (a finished job).
      const more = await latest.current(abort.signal);
      if (more !== false && !abort.signal.aborted) timer = setTimeout(tick, ms);
    };
    void tick();
    return () => {
      abort.abort();
      clearTimeout(timer);
    };
  }, deps);
}

/** Move focus to the page's heading when a page opens, so keyboard and screen-reader users
 * land on the new content. */
export function useFocusHeading<T extends HTMLElement>(key: unknown) {
  const ref = useRef<T>(null);
  useEffect(() => ref.current?.focus(), [key]);
  return ref;
}
