/**
 * Aquifer's Java client, on the gRPC stubs generated from {@code proto/} at build time.
 *
 * <p>{@link io.aquifer.client.AquiferClient} is the entry point: admin, the batching {@link
 * io.aquifer.client.EventWriter} (writer id and event numbers: exactly once across retries),
 * {@link io.aquifer.client.SegmentReader}s, {@link io.aquifer.client.StreamCut}s and {@link
 * io.aquifer.client.Transaction}s. Routing keys map to key positions exactly as the Rust client's
 * ({@link io.aquifer.client.KeyPositions}, checked against {@code proto/testdata/key-positions.tsv}).
 */
package io.aquifer.client;
