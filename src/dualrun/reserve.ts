/**
 * What the dual-run adds to every txn that applies a revision: the checkpoint,
 * the leader check and the owners fence (ops), and the bytes they take. A
 * revision fits one Consul txn, atomic, only in the room this leaves; the
 * audit judges write groups by the same room.
 */
export const DUALRUN_TXN_RESERVE = { reservedOps: 3, reservedBytes: 800 } as const;
