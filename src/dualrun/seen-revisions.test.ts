import { describe, expect, it } from 'vitest';
import { SeenRevisions } from './seen-revisions.js';

describe('SeenRevisions', () => {
  it('dates the oldest revision seen past the checkpoint; nothing waits once the checkpoint passes what was seen', () => {
    const seen = new SeenRevisions();
    expect(seen.behind(0)).toEqual({ revision: 0, since: undefined });
    seen.seen(10, 1_000);
    seen.seen(10, 2_000);
    seen.seen(15, 3_000);
    // Stuck at 5: the applier has not taken revision 10, seen at 1 s.
    expect(seen.behind(5)).toEqual({ revision: 15, since: 1_000 });
    expect(seen.behind(12)).toEqual({ revision: 15, since: 3_000 });
    expect(seen.behind(15)).toEqual({ revision: 15, since: undefined });
  });

  it('a leader that takes over dates what it first sees past its checkpoint from when that checkpoint was written', () => {
    const seen = new SeenRevisions(1_000);
    seen.seen(50, 30_000);
    seen.seen(60, 31_000);
    expect(seen.behind(40)).toEqual({ revision: 60, since: 1_000 });
    // Caught up past the first sample: the next one dates the lag.
    expect(seen.behind(55)).toEqual({ revision: 60, since: 31_000 });
    expect(seen.behind(60)).toEqual({ revision: 60, since: undefined });
  });

  it('keeps the oldest sample when it holds many', () => {
    const seen = new SeenRevisions();
    for (let i = 1; i <= 2_000; i++) seen.seen(i, i * 1_000);
    expect(seen.behind(0)).toEqual({ revision: 2_000, since: 1_000 });
  });
});
