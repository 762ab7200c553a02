/**
 * The bench's split of the Bind+Unbind gap: the daemon with BindDevice and
 * UnbindDevice answered from a cached result, so a round measures the RPC
 * layer (grpc-js, identity, decode, validation, handler, metrics, encode)
 * without the broker and the simulated kernel behind it. Bench only: it
 * replaces two methods on the running daemon's Broker instance.
 */
import type { Broker } from '../../src/broker/broker.js';
import type { ObjectView, TeardownReport } from '../../src/broker/events.js';

/** Each context's first bind and unbind run for real (so the answers are genuine), every later one is the cached answer. */
export function answerBindUnbindFromCache(broker: Broker): void {
  const realBind = broker.bindDevice.bind(broker);
  const realUnbind = broker.unbindDevice.bind(broker);
  const bound = new Map<string, ObjectView>();
  const unbound = new Map<string, TeardownReport>();
  broker.bindDevice = async (caller, id, deviceId) => {
    const key = `${id}/${deviceId}`;
    let view = bound.get(key);
    if (!view) {
      view = await realBind(caller, id, deviceId);
      unbound.set(id, await realUnbind(caller, id, view.handle));
      bound.set(key, view);
    }
    return view;
  };
  broker.unbindDevice = async (_caller, id) => {
    const report = unbound.get(id);
    if (!report) throw new Error(`bench cache: no unbind answer for context ${id}`);
    return report;
  };
}
