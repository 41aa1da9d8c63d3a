//! The standard gRPC surfaces operators' tools rely on, against the real binary: health checking
//! (`grpc.health.v1.Health`) through start, serving and draining, and server reflection (v1 and
//! v1alpha) describing every service without the `.proto` files.

mod common;

use std::process::Command;
use std::time::Duration;

use common::ChildServer;
use tonic_health::pb::HealthCheckRequest;
use tonic_health::pb::health_check_response::ServingStatus;
use tonic_health::pb::health_client::HealthClient;
use tonic_reflection::pb::{v1, v1alpha};

const SERVICES: [&str; 3] = [
    "idguard.v1.Verification",
    "idguard.v1.Registry",
    "idguard.v1.Admin",
];

async fn health(
    client: &mut HealthClient<tonic::transport::Channel>,
    service: &str,
) -> Result<ServingStatus, tonic::Status> {
    let response = client
        .check(HealthCheckRequest {
            service: service.into(),
        })
        .await?
        .into_inner();
    Ok(response.status())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_is_serving_once_ready_and_not_serving_while_draining() {
    let dir = tempfile::tempdir().unwrap();
    let mut server = ChildServer::start(&dir.path().join("data"));
    let mut client = HealthClient::new(server.channel().await);
    for service in [""].into_iter().chain(SERVICES) {
        assert_eq!(
            health(&mut client, service).await.unwrap(),
            ServingStatus::Serving,
            "{service:?}"
        );
    }
    let unknown = health(&mut client, "idguard.v1.Nothing").await.unwrap_err();
    assert_eq!(unknown.code(), tonic::Code::NotFound);

    let mut watch = client
        .watch(HealthCheckRequest {
            service: "idguard.v1.Verification".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.message().await.unwrap().unwrap();
    assert_eq!(first.status(), ServingStatus::Serving);
    let terminated = Command::new("kill")
        .args(["-TERM", &server.child.id().to_string()])
        .status()
        .unwrap();
    assert!(terminated.success());
    let next = tokio::time::timeout(Duration::from_secs(5), watch.message())
        .await
        .expect("a health change within 5 s")
        .unwrap()
        .unwrap();
    assert_eq!(next.status(), ServingStatus::NotServing);
    drop(watch);
    drop(client);
    let exit = tokio::task::spawn_blocking(move || server.child.wait().unwrap())
        .await
        .unwrap();
    assert_eq!(exit.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread")]
async fn reflection_lists_and_describes_every_service_in_v1_and_v1alpha() {
    let dir = tempfile::tempdir().unwrap();
    let server = ChildServer::start(&dir.path().join("data"));
    let channel = server.channel().await;

    let mut client = v1::server_reflection_client::ServerReflectionClient::new(channel.clone());
    let requests = [
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(v1::server_reflection_request::MessageRequest::ListServices(
                String::new(),
            )),
        },
        v1::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1::server_reflection_request::MessageRequest::FileContainingSymbol(
                    "idguard.v1.Verification.Check".into(),
                ),
            ),
        },
    ];
    let mut responses = client
        .server_reflection_info(tokio_stream::iter(requests))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1::server_reflection_response::MessageResponse::ListServicesResponse(list)) = listed
    else {
        panic!("not a service list: {listed:?}");
    };
    let names: Vec<String> = list
        .service
        .into_iter()
        .map(|service| service.name)
        .collect();
    for service in SERVICES.iter().chain(&["grpc.health.v1.Health"]) {
        assert!(
            names.iter().any(|name| name == service),
            "{service} missing from {names:?}"
        );
    }
    let described = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1::server_reflection_response::MessageResponse::FileDescriptorResponse(files)) =
        described
    else {
        panic!("not a file descriptor: {described:?}");
    };
    let file: prost_types::FileDescriptorProto =
        prost::Message::decode(files.file_descriptor_proto[0].as_slice()).unwrap();
    assert_eq!(file.package(), "idguard.v1");
    let verification = file
        .service
        .iter()
        .find(|service| service.name() == "Verification")
        .unwrap();
    let methods: Vec<&str> = verification
        .method
        .iter()
        .map(|method| method.name())
        .collect();
    assert_eq!(
        methods,
        ["Check", "CheckBatch", "CheckStream", "GetSigningKeys"]
    );

    let mut alpha = v1alpha::server_reflection_client::ServerReflectionClient::new(channel);
    let mut responses = alpha
        .server_reflection_info(tokio_stream::iter([v1alpha::ServerReflectionRequest {
            host: String::new(),
            message_request: Some(
                v1alpha::server_reflection_request::MessageRequest::ListServices(String::new()),
            ),
        }]))
        .await
        .unwrap()
        .into_inner();
    let listed = responses.message().await.unwrap().unwrap().message_response;
    let Some(v1alpha::server_reflection_response::MessageResponse::ListServicesResponse(list)) =
        listed
    else {
        panic!("not a service list: {listed:?}");
    };
    assert!(
        list.service
            .iter()
            .any(|service| service.name == "idguard.v1.Registry")
    );
}
