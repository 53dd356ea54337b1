import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { defineConfig } from 'vitest/config';

// Every temp folder a test makes (and the test servers' data) goes under one
// folder of this run, removed when the run ends: workers inherit TMPDIR, and
// os.tmpdir() reads it.
const runTemp = mkdtempSync(join(tmpdir(), 'migrate-tests-'));
process.env.TMPDIR = runTemp;
process.on('exit', () => rmSync(runTemp, { recursive: true, force: true }));

/**
 * Two projects: `unit` (the pure core, beside the code, no servers) and
 * `integration` (test/, against a real etcd and a real Consul that the global
 * setup starts on loopback and stops afterwards).
 */
export default defineConfig({
  test: {
    projects: [
      {
        test: {
          name: 'unit',
          include: ['src/**/*.test.ts'],
          environment: 'node',
          // Unit tests first; the integration project runs after them with its own worker count.
          sequence: { groupOrder: 0 },
        },
      },
      {
        test: {
          name: 'integration',
          include: ['test/**/*.test.ts'],
          environment: 'node',
          sequence: { groupOrder: 1 },
          globalSetup: ['test/support/global-setup.ts'],
          testTimeout: 60_000,
          hookTimeout: 120_000,
          // Two cores: one server pair shared by every file, files in two workers.
          maxWorkers: 2,
        },
      },
    ],
  },
});
