package io.aquifer.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertTrue;

import io.grpc.Status;
import java.nio.channels.ClosedChannelException;
import org.junit.jupiter.api.Test;

class AquiferExceptionTest {
  @Test
  void aConnectionClosedUnderACallIsRetriedLikeUnavailable() {
    Throwable closed =
        Status.UNKNOWN
            .withDescription("channel closed")
            .withCause(new ClosedChannelException())
            .asRuntimeException();
    AquiferException e = AquiferException.from(closed, "append");
    assertEquals(Status.Code.UNAVAILABLE, e.code());
    assertTrue(e.isRetryable());
    AquiferException other =
        AquiferException.from(Status.UNKNOWN.withDescription("bug").asRuntimeException(), "append");
    assertEquals(Status.Code.UNKNOWN, other.code());
    assertFalse(other.isRetryable());
  }
}
