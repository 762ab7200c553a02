/**
 * Prometheus metrics, all under `vfio_broker_`. Labels are bounded sets
 * (methods, codes, ops, errnos, types, reasons): no context, VM or handle IDs.
 * Gauges of current state are computed at scrape time, so the request path
 * pays nothing for them.
 */
import { Counter, Gauge, Registry, collectDefaultMetrics } from 'prom-client';
import type { Broker, BrokerObserver } from '../broker/broker.js';
import type { TeardownReport } from '../broker/events.js';
import { HANDOFF_RESULTS } from '../broker/handoff.js';
import { DEVICE_STATES } from '../broker/inventory.js';
import type { ObjectKind } from '../broker/objects.js';
import type { KernelCallObserver } from '../kernel/instrumented.js';
import type { KernelCapabilities } from '../kernel/types.js';
import { CellCounter, CellHistogram, type CounterCell, type HistogramCell } from './metric-cells.js';

export const PREFIX = 'vfio_broker_';
const OBJECT_KINDS: readonly ObjectKind[] = ['DEVICE', 'IOAS', 'HWPT_PAGING', 'HWPT_NESTED', 'VIOMMU', 'VDEVICE'];
/** Kernel calls are microseconds on sim and can be seconds for large maps on linux. */
const KERNEL_BUCKETS = [1e-6, 5e-6, 2.5e-5, 1e-4, 5e-4, 2.5e-3, 0.01, 0.05, 0.25, 1, 5];
const RPC_BUCKETS = [5e-5, 1e-4, 2.5e-4, 5e-4, 1e-3, 2.5e-3, 5e-3, 0.01, 0.025, 0.1, 0.5, 2.5, 10];

/** What one RPC method and status code record into, resolved once. */
interface RpcCells {
  handled: CounterCell;
  seconds: HistogramCell;
}

export class BrokerMetrics {
  readonly registry = new Registry();
  // Series recorded on every request are cells (metric-cells.ts); the rest stay prom-client's.
  readonly handled: CellCounter<'method' | 'code'>;
  readonly handlingSeconds: CellHistogram<'method' | 'code'>;
  readonly kernelCallSeconds: CellHistogram<'op' | 'result'>;
  readonly teardowns: CellCounter<'reason'>;
  readonly teardownStepFailures: Counter<'reason' | 'action'>;
  readonly vdeviceTeardowns: Counter<'outcome'>;
  readonly queueWaitSeconds: CellHistogram;
  readonly ready: Gauge;
  readonly auditRecords: CellCounter<'result'>;
  readonly fdHandoffs: Counter<'result'>;
  private broker: Broker | undefined;
  private readonly rpcCells = new Map<string, Map<string, RpcCells>>();
  private readonly kernelCells = new Map<string, Map<string, HistogramCell>>();
  private readonly queueWaitCell: HistogramCell;

  constructor(version: string) {
    const registers = [this.registry];
    collectDefaultMetrics({ register: this.registry, prefix: PREFIX });
    // prom-client names three gauges `_total`, which Prometheus reserves for
    // counters; the same counts remain as nodejs_active_{handles,requests,resources}.
    for (const what of ['handles', 'requests', 'resources']) this.registry.removeSingleMetric(`${PREFIX}nodejs_active_${what}_total`);
    this.handled = new CellCounter({ name: `${PREFIX}grpc_server_handled_total`, help: 'RPCs completed, by method and gRPC status code.', labelNames: ['method', 'code'], registers });
    this.handlingSeconds = new CellHistogram({
      name: `${PREFIX}grpc_server_handling_seconds`,
      help: 'Time from receiving an RPC to its status, by method and code.',
      labelNames: ['method', 'code'],
      buckets: RPC_BUCKETS,
      registers,
    });
    this.kernelCallSeconds = new CellHistogram({
      name: `${PREFIX}kernel_call_duration_seconds`,
      help: 'Duration of kernel calls (ioctl, open, close), by op and result (errno name or ok).',
      labelNames: ['op', 'result'],
      buckets: KERNEL_BUCKETS,
      registers,
    });
    this.teardowns = new CellCounter({ name: `${PREFIX}teardowns_total`, help: 'Teardowns run, by reason.', labelNames: ['reason'], registers });
    this.teardownStepFailures = new Counter({
      name: `${PREFIX}teardown_step_failures_total`,
      help: 'Teardown steps that still failed after retries (the kernel finished the job on close).',
      labelNames: ['reason', 'action'],
      registers,
    });
    this.vdeviceTeardowns = new Counter({
      name: `${PREFIX}vdevice_teardowns_total`,
      help: 'vDEVICEs settled by teardown: destroyed by the broker, or found already tombstoned by the kernel.',
      labelNames: ['outcome'],
      registers,
    });
    this.queueWaitSeconds = new CellHistogram({
      name: `${PREFIX}context_queue_wait_seconds`,
      help: 'Time a request waited in its context FIFO before running.',
      buckets: [1e-6, 1e-5, 1e-4, 1e-3, 0.01, 0.1, 1, 10],
      registers,
    });
    this.queueWaitCell = this.queueWaitSeconds.labels();
    this.ready = new Gauge({ name: `${PREFIX}ready`, help: '1 when the daemon serves requests, 0 while starting or draining.', registers });
    this.auditRecords = new CellCounter({ name: `${PREFIX}audit_records_total`, help: 'Audit log records written, by result.', labelNames: ['result'], registers });
    this.fdHandoffs = new Counter({
      name: `${PREFIX}fd_handoffs_total`,
      help: 'Attempts on the fd socket (device fds sent, memfds received, and refusals), by result.',
      labelNames: ['result'],
      registers,
    });
    for (const result of HANDOFF_RESULTS) this.fdHandoffs.inc({ result }, 0);
    new Gauge({ name: `${PREFIX}build_info`, help: 'Build information; always 1.', labelNames: ['version', 'node_version'], registers }).set(
      { version, node_version: process.version },
      1,
    );
    for (const outcome of ['destroyed', 'found_tombstoned']) this.vdeviceTeardowns.inc({ outcome }, 0);

    const self = this;
    new Gauge({
      name: `${PREFIX}objects`,
      help: 'Live iommufd objects across all contexts, by type.',
      labelNames: ['type'],
      registers,
      collect() {
        const counts = self.broker?.objectCounts();
        for (const kind of OBJECT_KINDS) this.set({ type: kind.toLowerCase() }, counts?.get(kind) ?? 0);
      },
    });
    new Gauge({
      name: `${PREFIX}contexts`,
      help: 'Open iommufd contexts.',
      registers,
      collect() {
        this.set(self.broker?.contextCount ?? 0);
      },
    });
    new Gauge({
      name: `${PREFIX}devices`,
      help: 'Inventory devices by state.',
      labelNames: ['state'],
      registers,
      collect() {
        const counts = self.broker?.inventory.countByState();
        for (const state of DEVICE_STATES) this.set({ state }, counts?.[state] ?? 0);
      },
    });
  }

  /** Publishes what the kernel probe found, as `_info` gauges. */
  kernelProbed(caps: KernelCapabilities): void {
    const registers = [this.registry];
    new Gauge({ name: `${PREFIX}kernel_info`, help: 'The kernel backend and its unbind profile; always 1.', labelNames: ['backend', 'release', 'profile', 'selftest'], registers }).set(
      { backend: caps.backend, release: caps.release, profile: caps.profile, selftest: String(caps.selftest) },
      1,
    );
    const capability = new Gauge({ name: `${PREFIX}kernel_capability_info`, help: 'ioctls the kernel provides; 1 per present ioctl.', labelNames: ['ioctl'], registers });
    for (const ioctl of caps.ioctls) capability.set({ ioctl }, 1);
  }

  attachBroker(broker: Broker): void {
    this.broker = broker;
  }

  readonly kernelCall: KernelCallObserver = (op, seconds, result) => {
    let byResult = this.kernelCells.get(op);
    if (!byResult) this.kernelCells.set(op, (byResult = new Map()));
    let cell = byResult.get(result);
    if (!cell) byResult.set(result, (cell = this.kernelCallSeconds.labels(op, result)));
    cell.observe(seconds);
  };

  readonly observer: BrokerObserver = {
    queueWait: (seconds) => this.queueWaitCell.observe(seconds),
    teardown: (report: TeardownReport) => {
      this.teardowns.inc({ reason: report.reason });
      if (report.vdevicesDestroyed) this.vdeviceTeardowns.inc({ outcome: 'destroyed' }, report.vdevicesDestroyed);
      if (report.vdevicesFoundTombstoned) this.vdeviceTeardowns.inc({ outcome: 'found_tombstoned' }, report.vdevicesFoundTombstoned);
      for (const failure of report.failures) this.teardownStepFailures.inc({ reason: report.reason, action: failure.action });
    },
  };

  rpcHandled(method: string, code: string, seconds: number): void {
    let byCode = this.rpcCells.get(method);
    if (!byCode) this.rpcCells.set(method, (byCode = new Map()));
    let cells = byCode.get(code);
    if (!cells) byCode.set(code, (cells = { handled: this.handled.labels(method, code), seconds: this.handlingSeconds.labels(method, code) }));
    cells.handled.inc();
    cells.seconds.observe(seconds);
  }
}
