import { describe, expect, it } from 'vitest';
import { OwnWrites, reverseDeleteGuardTrips } from './reverse-mirror.js';

describe('reverse mirror helpers', () => {
  it('the delete guard trips above 10 keys and 10% of the rule', () => {
    expect(reverseDeleteGuardTrips(10, 20)).toBe(false);
    expect(reverseDeleteGuardTrips(11, 1000)).toBe(false);
    expect(reverseDeleteGuardTrips(11, 100)).toBe(true);
    expect(reverseDeleteGuardTrips(500, 500)).toBe(true);
  });

  it('own writes: a revision still in flight is awaited before the answer', async () => {
    const own = new OwnWrites();
    let land!: (revision: number) => void;
    const write = own.track(new Promise<number>((resolve) => (land = resolve)));
    const answer = own.isOwn(42);
    land(42);
    await write;
    expect(await answer).toBe(true);
    expect(await own.isOwn(43)).toBe(false);
    own.prune(100);
    expect(await own.isOwn(42)).toBe(false);
  });
});
