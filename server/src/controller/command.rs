//! Commands of the `meta` raft log (prost; a storage format: never reuse a
//! tag).

use super::state::StreamKey;

#[derive(Clone, PartialEq, prost::Message)]
pub struct MetaCommand {
    #[prost(oneof = "MetaCmd", tags = "1, 2, 3, 4")]
    pub cmd: Option<MetaCmd>,
}

#[derive(Clone, PartialEq, prost::Oneof)]
pub enum MetaCmd {
    #[prost(message, tag = "1")]
    Create(CreateStream),
    #[prost(message, tag = "2")]
    Seal(StreamRef),
    #[prost(message, tag = "3")]
    MarkDeleting(StreamRef),
    #[prost(message, tag = "4")]
    Remove(StreamRef),
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct CreateStream {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
    #[prost(uint32, tag = "3")]
    pub segment_count: u32,
    /// Containers in the cluster, so placement is part of the command and
    /// replay places segments exactly as the first apply did.
    #[prost(uint32, tag = "4")]
    pub containers: u32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct StreamRef {
    #[prost(string, tag = "1")]
    pub scope: String,
    #[prost(string, tag = "2")]
    pub stream: String,
}

impl From<&StreamKey> for StreamRef {
    fn from(k: &StreamKey) -> Self {
        StreamRef {
            scope: k.scope.clone(),
            stream: k.stream.clone(),
        }
    }
}
