/**
 * Wraps `task` so that its calls run one after another: a call made while one runs starts once that one has
 * settled (resolved or rejected). For work that reads shared state when it starts and acts on it across awaits.
 */
export function oneAtATime(task: () => Promise<void>): () => Promise<void> {
  let last: Promise<void> = Promise.resolve();
  return () => {
    const run = last.then(task, task);
    last = run.catch(() => undefined);
    return run;
  };
}
