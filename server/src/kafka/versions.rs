//! Which Kafka APIs and versions the listener speaks (ApiVersions).
//!
//! The ranges overlap every client the project tests with: librdkafka
//! 2.0.2 (Debian's kcat) asks for at most Metadata v4, ListOffsets v2,
//! Produce v7 and Fetch v11; Java 4.x clients need the Kafka 2.1 level or
//! newer. Produce and Fetch stop at v12, because v13 and up name topics by
//! id. Each range lies inside what `kafka-protocol` decodes.

use kafka_protocol::messages::api_versions_response::ApiVersion;
use kafka_protocol::messages::{ApiKey, ApiVersionsResponse};
use kafka_protocol::ResponseError;

/// (API, lowest version, highest version) answered.
const SUPPORTED: &[(ApiKey, i16, i16)] = &[
    (ApiKey::Produce, 3, 12),
    (ApiKey::Fetch, 4, 12),
    (ApiKey::ListOffsets, 1, 7),
    (ApiKey::Metadata, 0, 12),
    (ApiKey::ApiVersions, 0, 3),
    (ApiKey::CreateTopics, 2, 7),
    (ApiKey::DeleteTopics, 1, 6),
    (ApiKey::DescribeConfigs, 1, 4),
    (ApiKey::InitProducerId, 0, 4),
    (ApiKey::FindCoordinator, 0, 6),
    (ApiKey::JoinGroup, 0, 9),
    (ApiKey::SyncGroup, 0, 5),
    (ApiKey::Heartbeat, 0, 4),
    (ApiKey::LeaveGroup, 0, 5),
    (ApiKey::OffsetCommit, 2, 9),
    (ApiKey::OffsetFetch, 1, 9),
    (ApiKey::DescribeGroups, 0, 5),
    (ApiKey::ListGroups, 0, 4),
    (ApiKey::DeleteGroups, 0, 2),
    // Transactions as Kafka before KIP-890's version 2 (no implicit adds).
    (ApiKey::AddPartitionsToTxn, 0, 3),
    (ApiKey::AddOffsetsToTxn, 0, 3),
    (ApiKey::TxnOffsetCommit, 0, 3),
    (ApiKey::EndTxn, 0, 3),
];

pub(super) fn supported(api: ApiKey, version: i16) -> bool {
    SUPPORTED
        .iter()
        .any(|(k, lo, hi)| *k == api && (*lo..=*hi).contains(&version))
}

pub(super) fn answer() -> ApiVersionsResponse {
    let mut r = ApiVersionsResponse::default();
    r.api_keys = SUPPORTED
        .iter()
        .map(|(k, lo, hi)| {
            ApiVersion::default()
                .with_api_key(*k as i16)
                .with_min_version(*lo)
                .with_max_version(*hi)
        })
        .collect();
    r
}

/// The answer to an ApiVersions request newer than we speak.
pub(super) fn unsupported() -> ApiVersionsResponse {
    answer().with_error_code(ResponseError::UnsupportedVersion.code())
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::protocol::Message;

    #[test]
    fn every_range_is_one_the_codec_speaks() {
        use kafka_protocol::messages as m;
        let codec = |k: ApiKey| match k {
            ApiKey::Produce => m::ProduceRequest::VERSIONS,
            ApiKey::Fetch => m::FetchRequest::VERSIONS,
            ApiKey::ListOffsets => m::ListOffsetsRequest::VERSIONS,
            ApiKey::Metadata => m::MetadataRequest::VERSIONS,
            ApiKey::ApiVersions => m::ApiVersionsRequest::VERSIONS,
            ApiKey::CreateTopics => m::CreateTopicsRequest::VERSIONS,
            ApiKey::DeleteTopics => m::DeleteTopicsRequest::VERSIONS,
            ApiKey::DescribeConfigs => m::DescribeConfigsRequest::VERSIONS,
            ApiKey::InitProducerId => m::InitProducerIdRequest::VERSIONS,
            ApiKey::FindCoordinator => m::FindCoordinatorRequest::VERSIONS,
            ApiKey::JoinGroup => m::JoinGroupRequest::VERSIONS,
            ApiKey::SyncGroup => m::SyncGroupRequest::VERSIONS,
            ApiKey::Heartbeat => m::HeartbeatRequest::VERSIONS,
            ApiKey::LeaveGroup => m::LeaveGroupRequest::VERSIONS,
            ApiKey::OffsetCommit => m::OffsetCommitRequest::VERSIONS,
            ApiKey::OffsetFetch => m::OffsetFetchRequest::VERSIONS,
            ApiKey::DescribeGroups => m::DescribeGroupsRequest::VERSIONS,
            ApiKey::ListGroups => m::ListGroupsRequest::VERSIONS,
            ApiKey::DeleteGroups => m::DeleteGroupsRequest::VERSIONS,
            ApiKey::AddPartitionsToTxn => m::AddPartitionsToTxnRequest::VERSIONS,
            ApiKey::AddOffsetsToTxn => m::AddOffsetsToTxnRequest::VERSIONS,
            ApiKey::TxnOffsetCommit => m::TxnOffsetCommitRequest::VERSIONS,
            ApiKey::EndTxn => m::EndTxnRequest::VERSIONS,
            other => panic!("{other:?} has no codec range here"),
        };
        for (k, lo, hi) in SUPPORTED {
            let r = codec(*k);
            assert!(r.min <= *lo && *hi <= r.max, "{k:?} {lo}..{hi} not in {r}");
        }
        // What Debian's kcat (librdkafka 2.0.2) uses.
        assert!(supported(ApiKey::Metadata, 4));
        assert!(supported(ApiKey::Produce, 7));
        assert!(supported(ApiKey::Fetch, 11));
        assert!(supported(ApiKey::ListOffsets, 2));
        assert!(!supported(ApiKey::Fetch, 13));
        assert!(!supported(ApiKey::Produce, 13));
    }
}
