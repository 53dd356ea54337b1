import type { Command } from 'commander';

/** The two stages `migrate --help` groups commands by (DESIGN §4's read-only and writing commands). */
export type Stage = 'read-only' | 'writes';

export const STAGE_HEADINGS: Record<Stage, string> = {
  'read-only': 'Read-only:',
  writes: 'Writes:',
};

/**
 * Each command's stage and one example, shown under its stage in `--help`.
 * Only registered commands are shown, so commands still to come can be listed
 * here already. Read-only means no etcd or Consul data is written (doctor's
 * probe key and verify's summary are the tool's own scratch and state keys).
 */
export const COMMAND_STAGES: Record<string, { stage: Stage; example: string }> = {
  doctor: { stage: 'read-only', example: 'migrate doctor --format json' },
  audit: { stage: 'read-only', example: 'migrate audit --format markdown > audit.md' },
  init: { stage: 'read-only', example: 'migrate init --output migration.yaml' },
  plan: { stage: 'read-only', example: 'migrate plan --format markdown > runbook.md' },
  verify: { stage: 'read-only', example: 'migrate verify --format junit > verify.xml' },
  status: { stage: 'read-only', example: 'migrate status' },
  export: { stage: 'read-only', example: 'migrate export --out kv.json' },
  acl: { stage: 'read-only', example: 'migrate acl' },
  completion: { stage: 'read-only', example: 'source <(migrate completion bash)' },
  copy: { stage: 'writes', example: 'migrate copy --dry-run --show-ops   (then: migrate copy)' },
  dualrun: { stage: 'writes', example: 'migrate dualrun --ha --metrics-addr :9464' },
  cutover: { stage: 'writes', example: 'migrate cutover --rule app --yes' },
  rollback: { stage: 'writes', example: 'migrate rollback --rule app --yes' },
  finalize: { stage: 'writes', example: 'migrate finalize --rule app --yes' },
  'probe-latency': { stage: 'writes', example: 'migrate probe-latency' },
};

/**
 * Puts every registered command under its stage heading in `--help` and adds
 * the examples, stage by stage. Call it once all commands are registered.
 */
export function groupCommandsByStage(program: Command, footer: string): void {
  for (const command of program.commands) {
    const entry = COMMAND_STAGES[command.name()];
    if (entry) command.helpGroup(STAGE_HEADINGS[entry.stage]);
  }
  // The implicit `help` command reads nothing either; without this it gets a "Commands:" group of its own.
  program.commandsGroup(STAGE_HEADINGS['read-only']).helpCommand(true).commandsGroup('');
  const examples = (Object.keys(STAGE_HEADINGS) as Stage[]).map((stage) => {
    const lines = program.commands
      .map((command) => COMMAND_STAGES[command.name()])
      .filter((entry) => entry?.stage === stage)
      .map((entry) => `  ${entry!.example}`);
    return `${STAGE_HEADINGS[stage].replace(/:$/, '')}, for example:\n${lines.join('\n')}`;
  });
  program.addHelpText('after', `\n${examples.join('\n\n')}\n\n${footer}`);
}
