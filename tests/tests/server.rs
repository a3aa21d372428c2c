//! The server as a user meets it: MNIST digits through the job API, results
//! that survive a restart, sessions that cannot see each other, and bad
//! input that is rejected without losing what was stored.

use std::time::Duration;

use picasso_tests::{Server, ServerOptions, data, image_id, job};
use serde_json::json;

#[test]
fn every_mnist_test_digit_is_classified_correctly() {
    let server = Server::start();
    let client = server.client();

    let mut files = Vec::new();
    for entry in std::fs::read_dir(data("mnist")).expect("list tests/data/mnist") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "png") {
            continue;
        }
        let name = path
            .file_name()
            .expect("name")
            .to_string_lossy()
            .into_owned();
        files.push((name, std::fs::read(&path).expect("read digit")));
    }
    files.sort();
    assert_eq!(files.len(), 20, "two digits per class");
    let parts: Vec<(&str, Vec<u8>)> = files.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
    let reply = client.upload_bytes(&parts).expect("upload digits");
    assert_eq!(reply.status, 201, "upload: {}", reply.body);
    let images = reply.body["images"].as_array().expect("stored images");
    let ids: Vec<&str> = images
        .iter()
        .map(|i| i["id"].as_str().expect("id"))
        .collect();

    let record = client
        .run_job(&job(
            &ids,
            &["mnist-cnn"],
            "class-probabilities",
            json!({"k": 3}),
        ))
        .expect("run the job");
    assert_eq!(record["state"], "completed", "{record}");
    let manifest = client
        .manifest(record["id"].as_str().expect("id"))
        .expect("manifest");
    for image in manifest["images"].as_array().expect("images") {
        let name = image["name"].as_str().expect("name");
        let expected = &name[..1];
        let scores = &image["models"][0]["renders"][0]["panels"][0]["scores"];
        assert_eq!(
            scores[0]["label"].as_str(),
            Some(expected),
            "{name} on mnist-cnn through class-probabilities: {scores}"
        );
        assert_eq!(
            image["models"][0]["top_classes"][0]["label"].as_str(),
            Some(expected),
            "{name}: the host's own top class"
        );
    }
}

#[test]
fn restart_keeps_uploads_and_results_per_session() {
    let mut server = Server::start();
    let alice = server.client();
    let image = alice
        .upload(&data("photos/coffee.png"))
        .expect("upload coffee.png");
    let record = alice
        .run_job(&job(
            &[&image],
            &["efficientnet-lite0"],
            "class-probabilities",
            json!({}),
        ))
        .expect("run the job");
    assert_eq!(record["state"], "completed", "{record}");
    let id = record["id"].as_str().expect("id").to_owned();
    let before = alice.manifest(&id).expect("manifest before restart");
    let (_, original) = alice
        .bytes(&format!("/api/images/{image}/file"))
        .expect("image file");

    server.restart();

    let images = alice.get("/api/images").expect("list images");
    assert_eq!(
        images.body["images"][0]["id"],
        image.as_str(),
        "upload kept: {}",
        images.body
    );
    let (status, bytes) = alice
        .bytes(&format!("/api/images/{image}/file"))
        .expect("image file");
    assert_eq!(status, 200);
    assert_eq!(bytes, original, "uploaded bytes unchanged by the restart");
    let after = alice.manifest(&id).expect("manifest after restart");
    assert_eq!(before, after, "manifest unchanged by the restart");
    let frame = after["images"][0]["models"][0]["frame"]
        .as_str()
        .expect("frame path");
    assert!(alice.job_file(&id, frame).is_ok(), "result files kept");

    let bob = server.client();
    let listed = bob.get("/api/images").expect("bob lists images");
    assert_eq!(
        listed.body["images"],
        json!([]),
        "bob sees no images: {}",
        listed.body
    );
    let jobs = bob.get("/api/jobs").expect("bob lists jobs");
    assert_eq!(
        jobs.body["jobs"],
        json!([]),
        "bob sees no jobs: {}",
        jobs.body
    );
    assert_eq!(
        bob.get(&format!("/api/jobs/{id}")).expect("job").status,
        404
    );
    assert_eq!(
        bob.get(&format!("/api/jobs/{id}/manifest"))
            .expect("manifest")
            .status,
        404
    );
    assert_eq!(
        bob.bytes(&format!("/api/jobs/{id}/files/{frame}"))
            .expect("file")
            .0,
        404
    );
    assert_eq!(
        bob.bytes(&format!("/api/images/{image}/file"))
            .expect("image")
            .0,
        404
    );
    let stolen = bob.post(
        "/api/jobs",
        &job(&[&image], &["mnist-cnn"], "class-probabilities", json!({})),
    );
    assert_eq!(
        stolen.expect("submit").status,
        400,
        "bob cannot use alice's image"
    );
}

#[test]
fn job_running_at_shutdown_is_marked_interrupted() {
    let mut server = Server::start();
    let client = server.client();
    let image = client.upload(&data("photos/chelsea.png")).expect("upload");
    // Stride 1 makes tens of thousands of occluded copies: still running
    // when the server is killed.
    let reply = client
        .post(
            "/api/jobs",
            &job(
                &[&image],
                &["efficientnet-lite0"],
                "occlusion",
                json!({"window": 8, "stride": 1}),
            ),
        )
        .expect("submit");
    assert_eq!(reply.status, 202, "{}", reply.body);
    let id = reply.body["id"].as_str().expect("id").to_owned();
    let started = std::time::Instant::now();
    while client.get(&format!("/api/jobs/{id}")).expect("poll").body["state"] != "running" {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "job never started"
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    server.restart();

    let record = client
        .get(&format!("/api/jobs/{id}"))
        .expect("job after restart");
    assert_eq!(record.body["state"], "interrupted", "{}", record.body);
    assert!(
        record.body["message"]
            .as_str()
            .is_some_and(|m| !m.is_empty()),
        "an interrupted job says why: {}",
        record.body
    );
}

#[test]
fn bad_uploads_and_settings_get_4xx_and_keep_stored_images() {
    let server = Server::start_with(ServerOptions {
        // Small enough that a test can exceed it cheaply.
        extra_config: "[uploads]\nmax_bytes = 400000\n".to_owned(),
        ..ServerOptions::default()
    });
    let client = server.client();
    let good = client
        .upload(&data("photos/chelsea.png"))
        .expect("upload chelsea.png");
    let (_, original) = client
        .bytes(&format!("/api/images/{good}/file"))
        .expect("file");

    let png = std::fs::read(data("photos/chelsea.png")).expect("read");
    let corrupt = png[..png.len() / 3].to_vec();
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("truncated.png", corrupt, &[415, 422]),
        (
            "notes.png",
            b"these are my notes, not a picture".to_vec(),
            &[415, 422],
        ),
        ("huge.png", vec![0u8; 500_000], &[413]),
    ];
    for (name, bytes, statuses) in cases {
        let reply = client.upload_bytes(&[(name, bytes)]).expect("upload");
        assert!(
            statuses.contains(&reply.status),
            "upload of {name}: status {} not in {statuses:?}: {}",
            reply.status,
            reply.body
        );
        let message = reply.body["error"].as_str().unwrap_or_default();
        assert!(
            message.contains(name),
            "the error for {name} names the file: {message}"
        );
    }

    // A bad file in a batch is skipped; the good file after it is stored.
    let digit = std::fs::read(data("mnist/7-1.png")).expect("read 7-1.png");
    let batch = client
        .upload_bytes(&[("bad.png", b"not a picture".to_vec()), ("7-1.png", digit)])
        .expect("upload a batch");
    assert!(
        [415, 422].contains(&batch.status),
        "the first bad file's status: {}",
        batch.body
    );
    assert_eq!(batch.body["failed"][0]["file"], "bad.png", "{}", batch.body);
    assert_eq!(batch.body["stored"][0]["name"], "7-1.png", "{}", batch.body);
    let digit_id = batch.body["stored"][0]["id"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    let removed = client
        .delete(&format!("/api/images/{digit_id}"))
        .expect("delete the digit");
    assert!(removed.status < 300, "{}", removed.body);

    let unknown = client
        .post(
            "/api/jobs",
            &job(
                &[&good],
                &["efficientnet-lite0"],
                "occlusion",
                json!({"fill": "purple"}),
            ),
        )
        .expect("submit");
    assert_eq!(unknown.status, 400, "{}", unknown.body);
    let message = unknown.body["error"].as_str().unwrap_or_default();
    assert!(message.contains("fill"), "names the setting: {message}");
    assert!(message.contains("purple"), "names the value: {message}");
    assert!(
        message.contains("grey"),
        "lists the accepted values: {message}"
    );

    let misspelled = client
        .post(
            "/api/jobs",
            &job(
                &[&good],
                &["efficientnet-lite0"],
                "occlusion",
                json!({"windw": 8}),
            ),
        )
        .expect("submit");
    assert_eq!(misspelled.status, 400, "{}", misspelled.body);

    let images = client.get("/api/images").expect("list");
    let listed = images.body["images"].as_array().expect("images");
    assert_eq!(
        listed.len(),
        1,
        "only the good image is stored: {}",
        images.body
    );
    assert_eq!(image_id(&images.body).as_deref(), Some(good.as_str()));
    let (status, bytes) = client
        .bytes(&format!("/api/images/{good}/file"))
        .expect("file");
    assert_eq!(status, 200);
    assert_eq!(bytes, original, "the stored image is intact");
}
