//! Generated etcd v3 API types and services, plus cairn's internal messages.
#![allow(clippy::all, clippy::pedantic, missing_docs)]

/// tonic's prost codec with a 1 KiB initial buffer instead of 8 KiB. The
/// buffers of a streaming call live as long as the stream: with thousands
/// of mostly idle watch streams (a proxy's fan-out), 16 KiB per stream
/// outweighed the watchers themselves. Buffers still grow for large
/// messages.
pub mod codec {
    use std::marker::PhantomData;

    use tonic::codec::{BufferSettings, Codec};
    use tonic_prost::{ProstDecoder, ProstEncoder};

    const BUFFER: usize = 1024;
    const YIELD_THRESHOLD: usize = 32 * 1024;

    #[derive(Debug, Clone, Copy)]
    pub struct SmallCodec<T, U>(PhantomData<(T, U)>);

    impl<T, U> Default for SmallCodec<T, U> {
        fn default() -> Self {
            SmallCodec(PhantomData)
        }
    }

    impl<T, U> Codec for SmallCodec<T, U>
    where
        T: prost::Message + Send + 'static,
        U: prost::Message + Default + Send + 'static,
    {
        type Encode = T;
        type Decode = U;
        type Encoder = ProstEncoder<T>;
        type Decoder = ProstDecoder<U>;

        fn encoder(&mut self) -> Self::Encoder {
            ProstEncoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }

        fn decoder(&mut self) -> Self::Decoder {
            ProstDecoder::new(BufferSettings::new(BUFFER, YIELD_THRESHOLD))
        }
    }
}

pub mod mvccpb {
    include!(concat!(env!("OUT_DIR"), "/mvccpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/mvccpb.serde.rs"));
}
pub mod authpb {
    include!(concat!(env!("OUT_DIR"), "/authpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/authpb.serde.rs"));
}
pub mod etcdserverpb {
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/etcdserverpb.serde.rs"));
}
pub mod v3lockpb {
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3lockpb.serde.rs"));
}
pub mod v3electionpb {
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.rs"));
    include!(concat!(env!("OUT_DIR"), "/v3electionpb.serde.rs"));
}
pub mod cairnpb {
    include!(concat!(env!("OUT_DIR"), "/cairnpb.rs"));
}

/// The part of the etcd API the JSON gateway cannot call through tonic's
/// service traits (their streaming methods take a `tonic::Streaming`, which
/// only a gRPC body can produce). Every role's service implements it next
/// to the five tonic traits, so the gateway is written once for all roles.
pub mod service {
    use std::future::Future;
    use std::pin::Pin;

    use crate::etcdserverpb::{
        LeaseKeepAliveRequest, LeaseKeepAliveResponse, StatusResponse, WatchRequest, WatchResponse,
    };

    pub type BoxStream<T> =
        Pin<Box<dyn futures_core::Stream<Item = Result<T, tonic::Status>> + Send + 'static>>;
    pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

    pub trait StreamCalls: Clone + Send + Sync + 'static {
        /// A Watch stream fed by `input`.
        /// Calls carry the client's metadata (its auth token).
        fn watch_stream(
            &self,
            meta: tonic::metadata::MetadataMap,
            input: BoxStream<WatchRequest>,
        ) -> BoxStream<WatchResponse>;
        /// One LeaseKeepAlive request's answer.
        fn keep_alive_once(
            &self,
            meta: tonic::metadata::MetadataMap,
            req: LeaseKeepAliveRequest,
        ) -> BoxFuture<'_, Result<LeaseKeepAliveResponse, tonic::Status>>;
        /// What `Status` answers, for `/v3/maintenance/status`.
        fn status_now(
            &self,
            meta: tonic::metadata::MetadataMap,
        ) -> BoxFuture<'_, Result<StatusResponse, tonic::Status>>;
    }
}
