//! The one client of the admin API, for the commands that talk to a running
//! pollhook (`status`, `dlq`, `tail`). Its errors say which of the three things an
//! operator can fix went wrong: nothing answers, the answer is a refusal,
//! or the answer cannot be read.

use std::net::SocketAddr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::de::DeserializeOwned;
use serde::Serialize;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the admin API at {addr} does not answer ({detail}); is pollhook running?")]
    Unreachable { addr: SocketAddr, detail: String },
    #[error("the admin API at {addr} answered {status}: {body}")]
    Refused {
        addr: SocketAddr,
        status: reqwest::StatusCode,
        body: String,
    },
    #[error("the admin API at {addr} gave an unreadable answer: {detail}")]
    Unreadable { addr: SocketAddr, detail: String },
}

pub struct AdminClient {
    addr: SocketAddr,
    http: reqwest::Client,
    token: Option<SecretString>,
}

impl AdminClient {
    /// `timeout` bounds each request: a replay of many dead letters takes
    /// longer than a status scrape.
    pub fn new(addr: SocketAddr, token: Option<SecretString>, timeout: Duration) -> AdminClient {
        let http = reqwest::Client::builder()
            .timeout(timeout)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("a client with static settings always builds");
        AdminClient { addr, http, token }
    }

    /// For a stream (`/events`): no bound on the whole response, only on
    /// the silence between two reads, which the server's keep-alive lines
    /// keep short while it lives.
    pub fn streaming(
        addr: SocketAddr,
        token: Option<SecretString>,
        silence: Duration,
    ) -> AdminClient {
        let http = reqwest::Client::builder()
            .read_timeout(silence)
            .connect_timeout(Duration::from_secs(2))
            .no_proxy()
            .build()
            .expect("a client with static settings always builds");
        AdminClient { addr, http, token }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Whether a pollhook answers at the address (`/healthz` needs no token).
    pub async fn answers(&self) -> bool {
        self.send(self.request(reqwest::Method::GET, "/healthz"))
            .await
            .is_ok()
    }

    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<T, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path).query(query))
            .await?;
        self.read(response).await
    }

    /// Like [`get`](Self::get), with a 404 as `None`.
    pub async fn get_opt<T: DeserializeOwned>(&self, path: &str) -> Result<Option<T>, ClientError> {
        let response = self.send(self.request(reqwest::Method::GET, path)).await?;
        if response.status() == reqwest::StatusCode::NOT_FOUND {
            return Ok(None);
        }
        self.read(response).await.map(Some)
    }

    pub async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        self.read(response).await
    }

    /// `GET path` whose answer is read as it comes (a 2xx; a refusal is an
    /// error, as for [`get`](Self::get)).
    pub async fn open(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<reqwest::Response, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::GET, path).query(query))
            .await?;
        self.refusal(response).await
    }

    /// `POST path` with a JSON body, whose answer is read as it comes.
    pub async fn post_open<B: Serialize>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<reqwest::Response, ClientError> {
        let response = self
            .send(self.request(reqwest::Method::POST, path).json(body))
            .await?;
        self.refusal(response).await
    }

    /// A non-2xx answer as the error it is.
    async fn refusal(&self, response: reqwest::Response) -> Result<reqwest::Response, ClientError> {
        let status = response.status();
        if status.is_success() {
            return Ok(response);
        }
        let body = response.text().await.unwrap_or_default();
        Err(ClientError::Refused {
            addr: self.addr,
            status,
            body: body.trim().to_string(),
        })
    }

    /// A stream's read failed (or went silent too long).
    pub fn broken(&self, e: reqwest::Error) -> ClientError {
        ClientError::Unreachable {
            addr: self.addr,
            detail: crate::http::error_chain(&e.without_url()),
        }
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let r = self
            .http
            .request(method, format!("http://{}{path}", self.addr));
        match &self.token {
            Some(t) => r.bearer_auth(t.expose_secret()),
            None => r,
        }
    }

    async fn send(&self, r: reqwest::RequestBuilder) -> Result<reqwest::Response, ClientError> {
        r.send().await.map_err(|e| ClientError::Unreachable {
            addr: self.addr,
            detail: crate::http::error_chain(&e.without_url()),
        })
    }

    async fn read<T: DeserializeOwned>(
        &self,
        response: reqwest::Response,
    ) -> Result<T, ClientError> {
        let response = self.refusal(response).await?;
        response.json().await.map_err(|e| ClientError::Unreadable {
            addr: self.addr,
            detail: crate::http::error_chain(&e.without_url()),
        })
    }
}
